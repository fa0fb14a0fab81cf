//! The cipher workers shared by every STREAM pipeline of a process ([`CipherPool`]):
//! one job queue, worker threads, and the buffers kept between pipelines. The pipelines
//! themselves (ordering, buffer reuse, seal and open) are in [`crate::crypto::pipeline`].

use std::collections::VecDeque;
use std::io;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use bytes::BytesMut;

use crate::crypto::chunk_hash::{ChunkDigest, chunk_digest};
use crate::crypto::pipeline::{ChunkSource, PipelineError};
use crate::crypto::stream::{ChunkLayout, FileKey};

/// Initial capacity of the shared job queue (it grows if more jobs are in flight).
const JOB_QUEUE: usize = 256;
/// Buffers of finished pipelines kept for the next ones (see [`CipherPool`]).
const MAX_SPARE: usize = 32;

/// The cipher workers shared by every pipeline of the process.
///
/// A pool of `threads` runs `threads - 1` worker threads; the thread that consumes a
/// pipeline is the last worker: while the chunk it waits for is not ready, it takes jobs
/// from the shared queue and runs them itself instead of sleeping. So a one-thread pool
/// seals inline with no thread hand-off at all, and in steady state nobody sleeps and
/// wakes per chunk (a wake-up costs about as much as sealing 16 KiB on a virtual
/// machine).
///
/// The pool also keeps the buffers of finished pipelines (up to 32, the oldest dropped
/// first) for the next pipelines to take, so that a transfer of many small files does
/// not allocate, zero and fault in fresh memory for every file. A kept buffer may still
/// be held downstream (by quinn until acknowledged); it is taken only once released.
pub struct CipherPool {
    pub(crate) shared: Arc<Shared>,
    threads: usize,
    handles: Vec<JoinHandle<()>>,
    /// Buffers of finished pipelines, with their capacity.
    spare: Mutex<VecDeque<(usize, BytesMut)>>,
}

#[derive(Default)]
pub(crate) struct Shared {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    sleepers: usize,
    shutdown: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A worker never panics while holding the lock (it only moves jobs), so a
        // poisoned lock still guards a consistent queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn try_pop(&self) -> Option<Job> {
        self.lock().jobs.pop_front()
    }
}

impl CipherPool {
    /// A pool of `threads` cipher threads (at least 1), counting the consuming thread.
    pub fn new(threads: usize) -> io::Result<Arc<Self>> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared::default());
        shared.lock().jobs.reserve(JOB_QUEUE);
        let mut handles = Vec::with_capacity(threads - 1);
        for n in 1..threads {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("conduit-cipher-{n}"))
                .spawn(move || worker(&shared))?;
            handles.push(handle);
        }
        Ok(Arc::new(Self {
            shared,
            threads,
            handles,
            spare: Mutex::new(VecDeque::new()),
        }))
    }

    /// A pool with one cipher thread per available core.
    pub fn with_all_cores() -> io::Result<Arc<Self>> {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Number of cipher threads, counting the consuming thread.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// A kept buffer of capacity `cap` that downstream has released, if there is one.
    pub(crate) fn take_spare(&self, cap: usize) -> Option<BytesMut> {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        let at = spare
            .iter_mut()
            .position(|(c, b)| *c == cap && b.try_reclaim(cap))?;
        spare.remove(at).map(|(_, b)| b)
    }

    /// Keeps the buffers of a finished pipeline.
    pub(crate) fn keep_spare(&self, bufs: impl Iterator<Item = (usize, BytesMut)>) {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        for b in bufs {
            if spare.len() == MAX_SPARE {
                spare.pop_front();
            }
            spare.push_back(b);
        }
    }

    pub(crate) fn dispatch(&self, job: Job) {
        let mut st = self.shared.lock();
        st.jobs.push_back(job);
        let wake = st.sleepers > 0;
        drop(st);
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

impl std::fmt::Debug for CipherPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CipherPool")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl Drop for CipherPool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

pub(crate) enum Op {
    /// Seal; `source` reads the plaintext first, unless the buffer already holds it.
    Seal {
        key: Arc<FileKey>,
        source: Option<Arc<dyn ChunkSource>>,
    },
    Open {
        key: Arc<FileKey>,
        source: Option<Arc<dyn ChunkSource>>,
    },
}

pub(crate) struct Job {
    pub(crate) index: u64,
    pub(crate) layout: ChunkLayout,
    /// Also hash the chunk's plaintext (see [`crate::crypto::chunk_hash`]).
    pub(crate) hash: bool,
    pub(crate) slot: usize,
    pub(crate) buf: BytesMut,
    pub(crate) op: Op,
    pub(crate) reply: SyncSender<Done>,
}

pub(crate) struct Done {
    pub(crate) index: u64,
    pub(crate) slot: usize,
    pub(crate) buf: BytesMut,
    pub(crate) digest: Option<ChunkDigest>,
    pub(crate) result: Result<(), PipelineError>,
}

fn worker(shared: &Shared) {
    loop {
        let job = {
            let mut st = shared.lock();
            loop {
                if let Some(job) = st.jobs.pop_front() {
                    break job;
                }
                if st.shutdown {
                    return;
                }
                st.sleepers += 1;
                st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                st.sleepers -= 1;
            }
        };
        run(job);
    }
}

/// Runs one job and sends its result to the pipeline that made it.
pub(crate) fn run(mut job: Job) {
    {
        let (index, last) = (job.index, job.layout.is_last(job.index));
        let mut digest = None;
        let result = match &job.op {
            Op::Seal { key, source } => {
                let pt_len = job.buf.len() - job.layout.overhead();
                let read = match source {
                    Some(source) => source.read_chunk(index, &mut job.buf[..pt_len]),
                    None => Ok(()),
                };
                match read {
                    Ok(()) => {
                        if job.hash {
                            digest = Some(chunk_digest(&job.layout, index, &job.buf[..pt_len]));
                        }
                        key.seal_chunk(index, last, &mut job.buf)
                            .map_err(PipelineError::from)
                    }
                    Err(source) => Err(PipelineError::Io { index, source }),
                }
            }
            Op::Open { key, source } => {
                let filled = match source {
                    Some(source) => source
                        .read_chunk(index, &mut job.buf)
                        .map_err(|source| PipelineError::Io { index, source }),
                    None => Ok(()),
                };
                filled
                    .and_then(|()| {
                        key.open_chunk(index, last, &mut job.buf)
                            .map_err(PipelineError::from)
                    })
                    .map(|()| {
                        if job.hash {
                            let pt_len = job.buf.len() - job.layout.overhead();
                            digest = Some(chunk_digest(&job.layout, index, &job.buf[..pt_len]));
                        }
                    })
            }
        };
        let Job {
            slot, buf, reply, ..
        } = job;
        // The pipeline may have been dropped; then nobody wants the result.
        let _ = reply.send(Done {
            index,
            slot,
            buf,
            digest,
            result,
        });
    }
}
