//! The parallel STREAM pipeline: seal or open a file's chunks on N worker threads and
//! hand them back in order.
//!
//! Chunks are independent (each has its own nonce), so they are sealed or opened on all
//! cores and put back in order by position. Memory is bounded by a fixed pool of chunk
//! buffers, each made when first needed (never more than `buffers`, never more than the
//! file has chunks, and only as large as the chunk for a one-chunk file); in steady
//! state a chunk costs no allocation and no copy:
//!
//! - **seal**: a worker reads chunk `i`'s plaintext straight into a pool buffer (a
//!   positional [`ChunkSource`], e.g. `pread` from the file), seals it in place and the
//!   buffer leaves the pipeline as [`Bytes`] that a QUIC stream takes without copying;
//! - **open**: the caller fills a pool buffer with chunk `i`'s ciphertext (e.g. from the
//!   network), a worker opens it in place, and the plaintext leaves as [`Bytes`].
//!
//! A buffer returns to the pool when every [`Bytes`] handle to it has been dropped
//! (`BytesMut::try_reclaim`): the pipeline never has more than `buffers` chunks in
//! memory, including the ones still held downstream (for example by quinn until they
//! are acknowledged). If all buffers are held downstream the pipeline waits for one to
//! be released.
//!
//! Workers live in a [`CipherPool`] shared by all pipelines of a process, taking jobs
//! from one queue; the consuming thread works too while it waits (see [`CipherPool`]).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

pub use crate::crypto::cipher_pool::CipherPool;
use crate::crypto::cipher_pool::{Done, Job, Op, run};
use crate::crypto::file_hash::{FileHash, FileHasher};
use crate::crypto::stream::{ChunkLayout, FileKey, StreamError};

/// Default number of pool buffers per pipeline: enough to keep every worker busy while
/// the consumer holds a few chunks.
pub const DEFAULT_BUFFERS: usize = 16;
/// Longest sleep while waiting for downstream to release a buffer.
const MAX_RECLAIM_BACKOFF: Duration = Duration::from_millis(2);

/// Errors of the pipeline.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// The STREAM layer rejected a chunk.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Reading a chunk's input failed.
    #[error("reading chunk {index}: {source}")]
    Io {
        /// Chunk position.
        index: u64,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// A worker thread is gone (it panicked or the pool was shut down).
    #[error("cipher worker pool stopped")]
    PoolStopped,
    /// The tree hash given to the pipeline does not match its layout and start.
    #[error("file hash state does not match the chunk layout")]
    HashShape,
    /// The caller stopped the pipeline while it waited for downstream to release a
    /// buffer (see [`SealPipeline::with_cancel`]).
    #[error("stopped while waiting for buffers")]
    Cancelled,
}

/// Reads chunk `index`'s plaintext into `buf` (exactly `buf.len()` bytes), from any
/// thread. A file does this with a positional read.
pub trait ChunkSource: Send + Sync + 'static {
    /// Fills `buf` with the plaintext of chunk `index`.
    fn read_chunk(&self, index: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Called once every chunk has been read, before the last sealed chunk leaves the
    /// sender (see [`crate::transfer::data::send_file`]): an error stops the file before
    /// the receiver can complete it. A file source checks here that the file did not
    /// change while it was read ([`crate::transfer::source::OpenSource`]); the default
    /// accepts.
    fn after_last_read(&self) -> io::Result<()> {
        Ok(())
    }
}

impl<F> ChunkSource for F
where
    F: Fn(u64, &mut [u8]) -> io::Result<()> + Send + Sync + 'static,
{
    fn read_chunk(&self, index: u64, buf: &mut [u8]) -> io::Result<()> {
        self(index, buf)
    }
}

/// A file read at `index * chunk_size`, whatever the length of the chunk being read.
#[derive(Debug)]
pub struct PositionalFile {
    file: std::fs::File,
    chunk_size: u64,
}

impl PositionalFile {
    /// Wraps an open file whose chunks are `chunk_size` bytes apart.
    pub fn new(file: std::fs::File, chunk_size: u64) -> Self {
        Self { file, chunk_size }
    }
}

impl ChunkSource for PositionalFile {
    fn read_chunk(&self, index: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let offset = index
            .checked_mul(self.chunk_size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "chunk offset overflows"))?;
        self.file.read_exact_at(buf, offset)
    }
}

/// Where a sequential file hash takes each chunk's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SequentialAt {
    /// Right after the dispatch read it (sealing).
    Read,
    /// When the opened chunk is delivered in order (opening).
    Delivery,
}

/// The shared engine of both pipelines: buffer pool, dispatch and in-order delivery.
struct Engine {
    pool: Arc<CipherPool>,
    layout: ChunkLayout,
    /// Capacity of every pool buffer.
    cap: usize,
    /// Most pool buffers this pipeline may hold.
    max_buffers: usize,
    /// Most buffers busy at once (in a job, or held downstream), when set: how far the
    /// pipeline may run ahead of downstream's releases, changed while it runs.
    limit: Option<Arc<AtomicUsize>>,
    /// Set by the caller to stop a pipeline that waits for buffers downstream may never
    /// release (a connection gone while quinn still holds its chunks).
    cancel: Option<Arc<AtomicBool>>,
    /// Pool buffers; `None` while a job holds it.
    slots: Vec<Option<BytesMut>>,
    /// Slots whose buffer is (or was) held downstream as `Bytes`.
    lent: Vec<bool>,
    /// Results that arrived out of order, by `index % buffers`.
    ready: Vec<Option<Done>>,
    reply_tx: SyncSender<Done>,
    reply_rx: Receiver<Done>,
    next_dispatch: u64,
    next_deliver: u64,
    in_flight: usize,
    end: u64,
    failed: bool,
    /// The whole-file hash being assembled, when hashing was asked for.
    tree: Option<FileHasher>,
    /// Where a sequential hash ([`FileHasher::parallel`] false) is fed the plaintext in
    /// order: as it is read, for a seal; as it is delivered, for an open.
    sequential_at: SequentialAt,
    /// `set_tree` got a tree that does not start where the pipeline starts.
    shape_error: bool,
}

impl Engine {
    fn new(pool: Arc<CipherPool>, layout: ChunkLayout, first: u64, buffers: usize) -> Self {
        // Never more buffers than chunks, and a file of one chunk gets a buffer of just
        // that chunk's size: small files cost small buffers.
        let remaining = layout.count().saturating_sub(first).max(1);
        let buffers = buffers
            .max(1)
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let cap = if remaining == 1 {
            layout.sealed_len(first)
        } else {
            layout.sealed_chunk_len()
        };
        let (reply_tx, reply_rx) = sync_channel(buffers);
        Self {
            pool,
            layout,
            cap,
            max_buffers: buffers,
            limit: None,
            cancel: None,
            slots: Vec::with_capacity(buffers),
            lent: Vec::with_capacity(buffers),
            ready: (0..buffers).map(|_| None).collect(),
            reply_tx,
            reply_rx,
            next_dispatch: first,
            next_deliver: first,
            in_flight: 0,
            end: layout.count(),
            failed: false,
            tree: None,
            sequential_at: SequentialAt::Delivery,
            shape_error: false,
        }
    }

    fn set_tree(&mut self, tree: FileHasher) {
        if tree.pushed() != self.next_deliver {
            self.failed = true;
            self.tree = None;
            self.shape_error = true;
        } else {
            self.tree = Some(tree);
        }
    }

    /// A free slot with its buffer set to `len` bytes, reclaiming buffers that
    /// downstream has released.
    fn free_slot(&mut self, len: usize) -> Option<(usize, BytesMut)> {
        let cap = self.cap;
        let limit = self
            .limit
            .as_ref()
            .map_or(usize::MAX, |l| l.load(Ordering::Relaxed).max(1));
        let (mut busy, mut free) = (0, None);
        for slot in 0..self.slots.len() {
            let Some(buf) = self.slots[slot].as_mut() else {
                busy += 1;
                continue;
            };
            if self.lent[slot] {
                if !buf.try_reclaim(cap) {
                    busy += 1;
                    continue;
                }
                self.lent[slot] = false;
            }
            if free.is_none() {
                free = Some(slot);
                if self.limit.is_none() {
                    break;
                }
            }
        }
        if busy >= limit {
            return None;
        }
        if let Some(slot) = free {
            let mut buf = self.slots[slot].take()?;
            set_len_initialized(&mut buf, len);
            return Some((slot, buf));
        }
        // Buffers are made (or taken from a finished pipeline) when first needed, up to
        // the limit.
        if self.slots.len() < self.max_buffers {
            let mut buf = self
                .pool
                .take_spare(cap)
                .unwrap_or_else(|| BytesMut::zeroed(cap));
            set_len_initialized(&mut buf, len);
            self.slots.push(None);
            self.lent.push(false);
            return Some((self.slots.len() - 1, buf));
        }
        None
    }

    /// Blocks until the next chunk in order is ready, dispatching new work as buffers
    /// allow. `dispatch` turns a free buffer into a job for position `index`.
    fn next_done(
        &mut self,
        dispatch: &mut dyn FnMut(u64, &mut BytesMut) -> Result<Op, PipelineError>,
    ) -> Option<Result<Done, PipelineError>> {
        if self.shape_error {
            self.shape_error = false;
            return Some(Err(PipelineError::HashShape));
        }
        if self.failed || self.next_deliver >= self.end {
            return None;
        }
        let mut backoff = Duration::from_micros(10);
        loop {
            // Top up: dispatch while there are chunks left and buffers free.
            while self.next_dispatch < self.end {
                let index = self.next_dispatch;
                let len = self.layout.sealed_len(index);
                let Some((slot, mut buf)) = self.free_slot(len) else {
                    break;
                };
                let op = match dispatch(index, &mut buf) {
                    Ok(op) => op,
                    Err(e) => {
                        self.slots[slot] = Some(buf);
                        self.failed = true;
                        return Some(Err(e));
                    }
                };
                if self.sequential_at == SequentialAt::Read {
                    if let Some(tree) = self.tree.as_mut().filter(|t| !t.parallel()) {
                        // The dispatch read the plaintext into the buffer, in order.
                        let plain = &buf[..len - self.layout.overhead()];
                        if tree.push_chunk(&self.layout, index, plain).is_err() {
                            self.slots[slot] = Some(buf);
                            self.failed = true;
                            return Some(Err(PipelineError::HashShape));
                        }
                    }
                }
                let job = Job {
                    index,
                    layout: self.layout,
                    hash: self.tree.as_ref().is_some_and(FileHasher::parallel),
                    slot,
                    buf,
                    op,
                    reply: self.reply_tx.clone(),
                };
                self.pool.dispatch(job);
                self.in_flight += 1;
                self.next_dispatch += 1;
            }
            // Collect results that are already there, without sleeping.
            loop {
                match self.reply_rx.try_recv() {
                    Ok(done) => self.place(done),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.failed = true;
                        return Some(Err(PipelineError::PoolStopped));
                    }
                }
            }
            let want = (self.next_deliver % self.ready.len() as u64) as usize;
            if let Some(done) = self.ready[want].take() {
                self.next_deliver += 1;
                if done.result.is_err() {
                    self.failed = true;
                } else if let Some(tree) = self.tree.as_mut() {
                    let pushed = match done.digest {
                        Some(digest) => tree.push_digest(digest),
                        None if !tree.parallel()
                            && self.sequential_at == SequentialAt::Delivery =>
                        {
                            let plain = self.layout.plaintext_len(done.index);
                            tree.push_chunk(&self.layout, done.index, &done.buf[..plain])
                        }
                        None => Ok(()),
                    };
                    if pushed.is_err() {
                        self.failed = true;
                        return Some(Err(PipelineError::HashShape));
                    }
                }
                return Some(Ok(done));
            }
            // Not ready yet: be a worker rather than sleep. The job may belong to another
            // pipeline of the same pool; its result goes to that pipeline.
            if let Some(job) = self.pool.shared.try_pop() {
                run(job);
                continue;
            }
            if self.in_flight > 0 {
                match self.reply_rx.recv() {
                    Ok(done) => self.place(done),
                    Err(_) => {
                        self.failed = true;
                        return Some(Err(PipelineError::PoolStopped));
                    }
                }
            } else {
                // Every buffer is held downstream: wait for one to be released, unless
                // the caller gave up.
                if self
                    .cancel
                    .as_ref()
                    .is_some_and(|c| c.load(Ordering::Relaxed))
                {
                    self.failed = true;
                    return Some(Err(PipelineError::Cancelled));
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_RECLAIM_BACKOFF);
            }
        }
    }

    /// Files a result under its position.
    fn place(&mut self, done: Done) {
        self.in_flight -= 1;
        let at = (done.index % self.ready.len() as u64) as usize;
        self.ready[at] = Some(done);
    }

    /// Hands a finished buffer downstream as `Bytes` of its first `len` bytes.
    fn lend(&mut self, done: Done, len: usize) -> Result<Bytes, PipelineError> {
        let Done {
            slot,
            mut buf,
            result,
            ..
        } = done;
        let out = match result {
            Ok(()) => {
                buf.truncate(len);
                Ok(buf.split().freeze())
            }
            Err(e) => Err(e),
        };
        self.lent[slot] = out.is_ok();
        if out.is_err() {
            buf.clear();
        }
        self.slots[slot] = Some(buf);
        out
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Wait for jobs still in the workers so their buffers are not written after the
        // pipeline is gone (they are owned by the jobs, so this is only for tidiness). A
        // pool of one thread has no workers: queued jobs run only when a consumer takes
        // them, so run them here rather than wait for nobody.
        while self.in_flight > 0 {
            let done = match self.reply_rx.try_recv() {
                Ok(done) => done,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    if let Some(job) = self.pool.shared.try_pop() {
                        run(job);
                        continue;
                    }
                    match self.reply_rx.recv() {
                        Ok(done) => done,
                        Err(_) => break,
                    }
                }
            };
            self.in_flight -= 1;
            if let Some(slot) = self.slots.get_mut(done.slot) {
                *slot = Some(done.buf);
            }
        }
        for done in self.ready.iter_mut().filter_map(Option::take) {
            if let Some(slot) = self.slots.get_mut(done.slot) {
                *slot = Some(done.buf);
            }
        }
        // Buffers still in a job are gone with it; the rest, if of a whole chunk (a
        // one-chunk file's is only as large as its chunk), go to the next pipelines.
        let cap = self.cap;
        if cap == self.layout.sealed_chunk_len() {
            self.pool
                .keep_spare(self.slots.drain(..).flatten().map(|b| (cap, b)));
        }
    }
}

/// Sets `buf`'s length to `len` without writing it.
///
/// Every pool buffer is created zero-filled at its full capacity (`BytesMut::zeroed`),
/// and `try_reclaim` gives back the same allocation, so the bytes below the capacity
/// are always initialised; a `resize` here would add a memset pass per chunk to the hot
/// path.
#[allow(unsafe_code)]
fn set_len_initialized(buf: &mut BytesMut, len: usize) {
    let len = len.min(buf.capacity());
    // SAFETY: `len <= capacity`, and all bytes up to the capacity were initialised when
    // the buffer was created zero-filled; reclaiming keeps the same allocation.
    unsafe { buf.set_len(len) }
}

/// Seals a file's chunks in parallel and yields them in order as [`Bytes`] ready for the
/// wire (`ciphertext || tag`).
pub struct SealPipeline {
    engine: Engine,
    key: Arc<FileKey>,
    source: Arc<dyn ChunkSource>,
}

impl SealPipeline {
    /// Seals chunks `first..` of a file with `layout` under `key`, reading plaintext from
    /// `source`, with `buffers` pool buffers.
    pub fn new(
        pool: Arc<CipherPool>,
        key: Arc<FileKey>,
        layout: ChunkLayout,
        first: u64,
        buffers: usize,
        source: Arc<dyn ChunkSource>,
    ) -> Self {
        Self {
            engine: Engine::new(pool, layout.sealed_with(key.suite()), first, buffers),
            key,
            source,
        }
    }
}

impl SealPipeline {
    /// Also computes the whole file's hash: BLAKE3 on the workers, from the plaintext
    /// each reads; SHA-256 on the calling thread, which then reads the plaintext itself,
    /// in order, before handing the chunk to a worker to seal. `tree` must already hold
    /// the chunks before `first` (a new [`FileHasher`] for a transfer from the start).
    pub fn with_file_hash(mut self, tree: FileHasher) -> Self {
        self.engine.sequential_at = SequentialAt::Read;
        self.engine.set_tree(tree);
        self
    }

    /// The file's hash, once every chunk has been delivered (with hashing on).
    pub fn file_hash(&self) -> Option<FileHash> {
        self.engine.tree.as_ref().and_then(FileHasher::finalize)
    }

    /// Lets at most `limit` buffers be busy at once (being sealed, or held downstream
    /// until released), read on every chunk so that the caller can change it while the
    /// pipeline runs; at most the `buffers` given to [`Self::new`] in any case.
    pub fn with_lead_limit(mut self, limit: Arc<AtomicUsize>) -> Self {
        self.engine.limit = Some(limit);
        self
    }

    /// Ends the pipeline with [`PipelineError::Cancelled`] when `cancel` is set while it
    /// waits for downstream to release a buffer.
    pub fn with_cancel(mut self, cancel: Arc<AtomicBool>) -> Self {
        self.engine.cancel = Some(cancel);
        self
    }
}

impl Iterator for SealPipeline {
    type Item = Result<Bytes, PipelineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (key, source) = (&self.key, &self.source);
        // A sequential file hash is fed as the plaintext is read, in order: then the
        // reading happens here, not on the worker.
        let read_here = self.engine.tree.as_ref().is_some_and(|t| !t.parallel());
        let overhead = self.engine.layout.overhead();
        let mut dispatch = |index: u64, buf: &mut BytesMut| {
            if !read_here {
                return Ok(Op::Seal {
                    key: Arc::clone(key),
                    source: Some(Arc::clone(source)),
                });
            }
            let plain = buf.len() - overhead;
            source
                .read_chunk(index, &mut buf[..plain])
                .map_err(|source| PipelineError::Io { index, source })?;
            Ok(Op::Seal {
                key: Arc::clone(key),
                source: None,
            })
        };
        let done = match self.engine.next_done(&mut dispatch)? {
            Ok(done) => done,
            Err(e) => return Some(Err(e)),
        };
        let len = self.engine.layout.sealed_len(done.index);
        Some(self.engine.lend(done, len))
    }
}

/// Opens a file's chunks in parallel and yields the plaintext in order as [`Bytes`].
///
/// The ciphertext comes either in order from the calling thread
/// ([`OpenPipeline::new`]: `source(index, buf)` must fill `buf`, exactly the sealed
/// length of chunk `index`, or fail), or from a positional [`ChunkSource`] that the
/// workers read in parallel ([`OpenPipeline::positional`], for ciphertext already in
/// memory or on disk). An [`io::ErrorKind::UnexpectedEof`] from the sequential source
/// means the stream ended early and is reported as [`StreamError::Truncated`]. Checking
/// that nothing follows the last chunk is the caller's job (the pipeline never reads
/// past it).
pub struct OpenPipeline<S> {
    engine: Engine,
    key: Arc<FileKey>,
    source: S,
    positional: Option<Arc<dyn ChunkSource>>,
}

/// The sequential source of a positional [`OpenPipeline`] (never called).
pub type NoSequentialSource = fn(u64, &mut [u8]) -> io::Result<()>;

fn no_sequential_source(_: u64, _: &mut [u8]) -> io::Result<()> {
    Ok(())
}

impl OpenPipeline<NoSequentialSource> {
    /// Opens chunks `first..` whose ciphertext the workers read from `source` at each
    /// chunk's position in the sealed stream.
    pub fn positional(
        pool: Arc<CipherPool>,
        key: Arc<FileKey>,
        layout: ChunkLayout,
        first: u64,
        buffers: usize,
        source: Arc<dyn ChunkSource>,
    ) -> Self {
        Self {
            engine: Engine::new(pool, layout.sealed_with(key.suite()), first, buffers),
            key,
            source: no_sequential_source,
            positional: Some(source),
        }
    }
}

impl<S> OpenPipeline<S>
where
    S: FnMut(u64, &mut [u8]) -> io::Result<()>,
{
    /// Opens chunks `first..` of a file with `layout` under `key`.
    pub fn new(
        pool: Arc<CipherPool>,
        key: Arc<FileKey>,
        layout: ChunkLayout,
        first: u64,
        buffers: usize,
        source: S,
    ) -> Self {
        Self {
            engine: Engine::new(pool, layout.sealed_with(key.suite()), first, buffers),
            key,
            source,
            positional: None,
        }
    }
}

impl<S> OpenPipeline<S> {
    /// Also computes the whole file's hash: BLAKE3 on the workers, from each opened
    /// chunk; SHA-256 on the calling thread as each chunk is delivered in order. `tree`
    /// must already hold the chunks before `first`.
    pub fn with_file_hash(mut self, tree: FileHasher) -> Self {
        self.engine.sequential_at = SequentialAt::Delivery;
        self.engine.set_tree(tree);
        self
    }

    /// The file's hash, once every chunk has been delivered (with hashing on).
    pub fn file_hash(&self) -> Option<FileHash> {
        self.engine.tree.as_ref().and_then(FileHasher::finalize)
    }
}

impl<S> Iterator for OpenPipeline<S>
where
    S: FnMut(u64, &mut [u8]) -> io::Result<()>,
{
    type Item = Result<Bytes, PipelineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (key, source, expected) = (&self.key, &mut self.source, self.engine.layout.count());
        let positional = &self.positional;
        let mut dispatch = |index: u64, buf: &mut BytesMut| match positional {
            Some(p) => Ok(Op::Open {
                key: Arc::clone(key),
                source: Some(Arc::clone(p)),
            }),
            None => match source(index, buf) {
                Ok(()) => Ok(Op::Open {
                    key: Arc::clone(key),
                    source: None,
                }),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(StreamError::Truncated {
                    received: index,
                    expected,
                }
                .into()),
                Err(source) => Err(PipelineError::Io { index, source }),
            },
        };
        let done = match self.engine.next_done(&mut dispatch)? {
            Ok(done) => done,
            Err(e) => return Some(Err(e)),
        };
        let len = self.engine.layout.plaintext_len(done.index);
        Some(self.engine.lend(done, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::stream::{CHUNK_OVERHEAD, ChunkSize, Opener, Sealer};

    fn pattern(len: u64) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
            .collect()
    }

    fn source_of(data: Arc<Vec<u8>>, chunk: usize) -> Arc<dyn ChunkSource> {
        Arc::new(move |index: u64, buf: &mut [u8]| {
            let start = index as usize * chunk;
            buf.copy_from_slice(&data[start..start + buf.len()]);
            Ok(())
        })
    }

    #[test]
    fn a_pipeline_waiting_for_buffers_ends_when_cancelled() {
        let chunk = ChunkSize::new(16 << 10).unwrap();
        let size = 10 * (16 << 10);
        let cancel = Arc::new(AtomicBool::new(false));
        let mut p = SealPipeline::new(
            CipherPool::new(2).unwrap(),
            Arc::new(FileKey::from_bytes(&[7u8; 32])),
            ChunkLayout::new(size, chunk),
            0,
            2,
            source_of(Arc::new(pattern(size)), chunk.bytes()),
        )
        .with_cancel(Arc::clone(&cancel));
        // Both buffers held downstream (as a closed connection holds them).
        let _held: Vec<Bytes> = (0..2).map(|_| p.next().unwrap().unwrap()).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let got = p.next();
            tx.send(matches!(got, Some(Err(PipelineError::Cancelled))))
                .unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "it waits"
        );
        cancel.store(true, Ordering::Relaxed);
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    }

    #[test]
    fn a_pipeline_dropped_midway_on_a_one_thread_pool_returns() {
        let chunk = ChunkSize::new(16 << 10).unwrap();
        let key = Arc::new(FileKey::from_bytes(&[6u8; 32]));
        let size = 12 * (16 << 10);
        let data = Arc::new(pattern(size));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // No worker threads: chunks after the first stay queued when it is taken.
            let mut p = SealPipeline::new(
                CipherPool::new(1).unwrap(),
                key,
                ChunkLayout::new(size, chunk),
                0,
                8,
                source_of(data, chunk.bytes()),
            );
            let first = p.next().map(|r| r.map(|b| b.len()));
            drop(p);
            tx.send(first.is_some()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(20)).unwrap(),
            "dropping the pipeline did not return"
        );
    }

    #[test]
    fn the_lead_limit_holds_the_pipeline_until_downstream_releases_a_chunk() {
        let chunk = ChunkSize::new(16 << 10).unwrap();
        let key = Arc::new(FileKey::from_bytes(&[5u8; 32]));
        let size = 20 * (16 << 10);
        let data = Arc::new(pattern(size));
        let limit = Arc::new(AtomicUsize::new(3));
        let mut p = SealPipeline::new(
            CipherPool::new(2).unwrap(),
            key,
            ChunkLayout::new(size, chunk),
            0,
            16,
            source_of(data, chunk.bytes()),
        )
        .with_lead_limit(Arc::clone(&limit));
        // Three chunks held downstream: the fourth waits.
        let held: Vec<Bytes> = (0..3).map(|_| p.next().unwrap().unwrap()).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let fourth = p.next().map(|r| r.map(|b| b.len()));
            tx.send(fourth.is_some()).unwrap();
            // Raised while running: the rest flows with one chunk held.
            limit.store(16, Ordering::Relaxed);
            let _kept = p.next();
            p.filter(Result::is_ok).count()
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a fourth chunk while three are held"
        );
        drop(held);
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        assert_eq!(t.join().unwrap(), 20 - 5);
    }

    #[test]
    fn the_random_iv_suite_seals_28_bytes_more_per_chunk_and_opens_back() {
        use crate::crypto::suite::Suite;
        let chunk = ChunkSize::new(16 << 10).unwrap();
        let key = Arc::new(FileKey::with_suite(
            Suite::Aes256GcmRandomIv,
            &[9u8; 32],
            chunk,
        ));
        let pool = CipherPool::new(2).unwrap();
        let size = 5 * (16 << 10) + 123;
        let data = Arc::new(pattern(size));
        // A layout made without the suite: the pipelines take the key's overhead.
        let layout = ChunkLayout::new(size, chunk);
        let sealed: Vec<Vec<u8>> = SealPipeline::new(
            pool.clone(),
            key.clone(),
            layout,
            0,
            3,
            source_of(data.clone(), chunk.bytes()),
        )
        .map(|c| c.map(|b| b.to_vec()))
        .collect::<Result<_, _>>()
        .unwrap();
        let wire_layout = ChunkLayout::for_suite(size, chunk, Suite::Aes256GcmRandomIv);
        for (i, c) in sealed.iter().enumerate() {
            assert_eq!(c.len(), layout.plaintext_len(i as u64) + 28, "chunk {i}");
            assert_eq!(c.len(), wire_layout.sealed_len(i as u64));
        }
        let wire: Vec<u8> = sealed.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(wire.len() as u64, wire_layout.sealed_total());
        let mut at = 0usize;
        let opened: Vec<u8> = OpenPipeline::new(pool, key, layout, 0, 3, |_, buf: &mut [u8]| {
            buf.copy_from_slice(&wire[at..at + buf.len()]);
            at += buf.len();
            Ok(())
        })
        .map(|c| c.map(|b| b.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .concat();
        assert_eq!(opened, *data);
    }

    #[test]
    fn pipeline_matches_sequential_sealer_and_opens_back() {
        let chunk = ChunkSize::new(16 << 10).unwrap();
        let key = Arc::new(FileKey::from_bytes(&[3u8; 32]));
        let pool = CipherPool::new(3).unwrap();
        for size in [0u64, 1, 16 << 10, (16 << 10) + 1, 200_000] {
            let data = Arc::new(pattern(size));
            let layout = ChunkLayout::new(size, chunk);
            // Copy each chunk out so its pool buffer is released (holding all of them
            // would stall the pipeline by design: memory is bounded).
            let sealed: Vec<Vec<u8>> = SealPipeline::new(
                pool.clone(),
                key.clone(),
                layout,
                0,
                4,
                source_of(data.clone(), chunk.bytes()),
            )
            .map(|c| c.map(|b| b.to_vec()))
            .collect::<Result<_, _>>()
            .unwrap();
            assert_eq!(sealed.len() as u64, layout.count());
            // Same bytes as the sequential state machine.
            let mut seq = Sealer::new(&key, layout);
            for (i, c) in sealed.iter().enumerate() {
                let i = i as u64;
                let start = layout.offset(i) as usize;
                let mut buf = data[start..start + layout.plaintext_len(i)].to_vec();
                buf.extend_from_slice(&[0; CHUNK_OVERHEAD]);
                if layout.is_last(i) {
                    let s = std::mem::replace(&mut seq, Sealer::new(&key, layout));
                    s.finish(&mut buf).unwrap();
                } else {
                    seq.seal_next(&mut buf).unwrap();
                }
                assert_eq!(&buf[..], &c[..], "chunk {i}");
                let mut o = Opener::starting_at(&key, layout, i);
                let mut copy = c.to_vec();
                assert_eq!(
                    o.open_next(&mut copy).unwrap(),
                    &data[start..start + layout.plaintext_len(i)]
                );
            }
            // And the open pipeline restores the plaintext.
            let wire: Vec<u8> = sealed.iter().flat_map(|b| b.iter().copied()).collect();
            let mut at = 0usize;
            let opened: Vec<Vec<u8>> = OpenPipeline::new(
                pool.clone(),
                key.clone(),
                layout,
                0,
                4,
                |_, buf: &mut [u8]| {
                    buf.copy_from_slice(&wire[at..at + buf.len()]);
                    at += buf.len();
                    Ok(())
                },
            )
            .map(|c| c.map(|b| b.to_vec()))
            .collect::<Result<_, _>>()
            .unwrap();
            let plain: Vec<u8> = opened.iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(plain, *data);
        }
    }

    #[test]
    fn open_pipeline_reports_truncation_and_tampering() {
        let chunk = ChunkSize::new(16 << 10).unwrap();
        let key = Arc::new(FileKey::from_bytes(&[4u8; 32]));
        let pool = CipherPool::new(2).unwrap();
        let size = 5 * (16 << 10);
        let layout = ChunkLayout::new(size, chunk);
        let data = Arc::new(pattern(size));
        let sealed: Vec<Vec<u8>> = SealPipeline::new(
            pool.clone(),
            key.clone(),
            layout,
            0,
            4,
            source_of(data, chunk.bytes()),
        )
        .map(|c| c.map(|b| b.to_vec()))
        .collect::<Result<_, _>>()
        .unwrap();
        // Truncated after 3 chunks.
        let mut n = 0;
        let res: Result<Vec<Vec<u8>>, _> = OpenPipeline::new(
            pool.clone(),
            key.clone(),
            layout,
            0,
            4,
            |i, buf: &mut [u8]| {
                if i >= 3 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                buf.copy_from_slice(&sealed[i as usize]);
                n += 1;
                Ok(())
            },
        )
        .map(|c| c.map(|b| b.to_vec()))
        .collect();
        assert!(matches!(
            res,
            Err(PipelineError::Stream(StreamError::Truncated {
                received: 3,
                expected: 5
            }))
        ));
        // Chunk 2 replaced by chunk 1: fails at index 2.
        let res: Result<Vec<Vec<u8>>, _> =
            OpenPipeline::new(pool, key, layout, 0, 4, |i, buf: &mut [u8]| {
                let from = if i == 2 { 1 } else { i as usize };
                buf.copy_from_slice(&sealed[from]);
                Ok(())
            })
            .map(|c| c.map(|b| b.to_vec()))
            .collect();
        assert!(matches!(
            res,
            Err(PipelineError::Stream(StreamError::Tampered { index: 2 }))
        ));
    }

    #[test]
    fn file_hash_equals_the_hash_of_the_file_in_both_algorithms() {
        use crate::crypto::file_hash::{FileHash, FileHasher, HashAlg};
        let chunk = ChunkSize::new(16 << 10).unwrap();
        let key = Arc::new(FileKey::from_bytes(&[6u8; 32]));
        let pool = CipherPool::new(2).unwrap();
        for (size, alg) in [0u64, 7, 16 << 10, 100_000, 300_001]
            .into_iter()
            .flat_map(|s| [(s, HashAlg::Blake3), (s, HashAlg::Sha256)])
        {
            let data = Arc::new(pattern(size));
            let want = Some(FileHash::of(alg, &data));
            let layout = ChunkLayout::new(size, chunk);
            let mut seal = SealPipeline::new(
                pool.clone(),
                key.clone(),
                layout,
                0,
                4,
                source_of(data.clone(), chunk.bytes()),
            )
            .with_file_hash(FileHasher::new(alg, &layout));
            let wire: Vec<u8> = seal.by_ref().flat_map(|c| c.unwrap().to_vec()).collect();
            assert_eq!(seal.file_hash(), want, "seal, {alg:?} size {size}");

            // Open from chunk 1 on, with the prefix hashed as a resuming receiver would.
            let first = u64::from(layout.count() > 1);
            let mut tree = FileHasher::new(alg, &layout);
            for i in 0..first {
                let start = layout.offset(i) as usize;
                tree.push_chunk(&layout, i, &data[start..start + layout.plaintext_len(i)])
                    .unwrap();
            }
            let mut at = (0..first).map(|i| layout.sealed_len(i)).sum::<usize>();
            let mut open = OpenPipeline::new(
                pool.clone(),
                key.clone(),
                layout,
                first,
                4,
                |_, buf: &mut [u8]| {
                    buf.copy_from_slice(&wire[at..at + buf.len()]);
                    at += buf.len();
                    Ok(())
                },
            )
            .with_file_hash(tree);
            for c in open.by_ref() {
                c.unwrap();
            }
            assert_eq!(open.file_hash(), want, "open, {alg:?} size {size}");
        }
    }

    #[test]
    fn a_tree_hash_that_does_not_match_the_start_is_an_error() {
        use crate::crypto::file_hash::{FileHasher, HashAlg};
        let chunk = ChunkSize::new(16 << 10).unwrap();
        let layout = ChunkLayout::new(100_000, chunk);
        let key = Arc::new(FileKey::from_bytes(&[6u8; 32]));
        let mut p = SealPipeline::new(
            CipherPool::new(1).unwrap(),
            key,
            layout,
            2,
            4,
            Arc::new(|_: u64, _: &mut [u8]| Ok(())),
        )
        .with_file_hash(FileHasher::new(HashAlg::Blake3, &layout));
        assert!(matches!(p.next(), Some(Err(PipelineError::HashShape))));
        assert!(p.next().is_none());
    }

    #[test]
    fn buffers_are_bounded_while_downstream_holds_chunks() {
        let chunk = ChunkSize::new(16 << 10).unwrap();
        let key = Arc::new(FileKey::from_bytes(&[5u8; 32]));
        let pool = CipherPool::new(2).unwrap();
        let size = 8 * (16 << 10);
        let layout = ChunkLayout::new(size, chunk);
        let mut p = SealPipeline::new(
            pool,
            key,
            layout,
            0,
            2,
            Arc::new(|_: u64, _: &mut [u8]| Ok(())),
        );
        let a = p.next().unwrap().unwrap();
        let b = p.next().unwrap().unwrap();
        // Both buffers are out; release one from another thread after a while.
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(a);
        });
        let c = p.next().unwrap().unwrap();
        t.join().unwrap();
        assert_eq!(c.len(), layout.sealed_len(2));
        drop((b, c));
        assert_eq!(p.count(), 5);
    }
}
