//! Group commit: the records that transfers write at the same time share one append.
//!
//! A record is queued; if no commit is running, one starts on a blocking thread (once the
//! tasks ready at that moment have run, so that files finishing together queue their
//! records first) and takes everything queued so far as one group
//! ([`AuditLog::append_batch`]: one lock of the log, one write and one `fdatasync` for the
//! group). Records queued while a commit is running go in the next group, which the same
//! thread commits right after. Each caller still waits until its own records are durable
//! (or failed) before it goes on, so a record is never relied on (a file reported
//! completed, a receipt sent) before it is on disk; the chain, the files and their format
//! are exactly those of one append per record, in the order the records were queued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::audit::AuditError;
use crate::audit::log::AuditLog;
use crate::audit::record::Record;

/// The chain's head right after a caller's last record: its sequence number and MAC.
type Head = (u64, [u8; 32]);

/// One caller's records (kept together, in order, in one group) and where to say how
/// their commit went.
struct Waiting {
    records: Vec<Record>,
    done: oneshot::Sender<Result<Head, AuditError>>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// Whether a commit is running (it takes what is queued before it stops).
    running: bool,
}

/// The group committer of one [`AuditLog`].
pub(crate) struct GroupCommit {
    log: Arc<AuditLog>,
    queue: Mutex<Queue>,
    /// Groups committed so far.
    groups: AtomicU64,
}

impl GroupCommit {
    /// Commits to `log`.
    pub(crate) fn new(log: Arc<AuditLog>) -> Arc<Self> {
        Arc::new(Self {
            log,
            queue: Mutex::new(Queue::default()),
            groups: AtomicU64::new(0),
        })
    }

    /// How many groups were committed so far.
    #[cfg(test)]
    pub(crate) fn groups(&self) -> u64 {
        self.groups.load(Ordering::Relaxed)
    }

    /// The log.
    pub(crate) fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    /// Appends `records` (in this order, none of another caller's between them) with the
    /// next group and waits until they are durable: the sequence number and MAC of the
    /// last one. An error means none of them can be relied on.
    pub(crate) async fn append(self: &Arc<Self>, records: Vec<Record>) -> Result<Head, AuditError> {
        let (done, wait) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.waiting.push(Waiting { records, done });
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            // The commit starts once the tasks ready now have run: those finishing a file
            // at the same moment queue their records first and share this commit. Even if
            // this caller stops waiting meanwhile, the commit starts (`Start`'s drop).
            let start = Start(Some(Arc::clone(self)));
            tokio::task::yield_now().await;
            drop(start);
        }
        wait.await.unwrap_or_else(|_| {
            Err(AuditError::Io(std::io::Error::other(
                "the audit writer stopped before the record was written",
            )))
        })
    }

    /// Commits groups until nothing is queued.
    fn commit_all(&self) {
        loop {
            let group = {
                let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            self.commit(group);
        }
    }

    /// Commits one group and tells each caller how its records went.
    fn commit(&self, group: Vec<Waiting>) {
        let mut counts = Vec::with_capacity(group.len());
        let mut records = Vec::new();
        let mut replies = Vec::with_capacity(group.len());
        for w in group {
            counts.push(w.records.len());
            records.extend(w.records);
            replies.push(w.done);
        }
        let (durable, failed) = self.log.append_batch(records);
        self.groups.fetch_add(1, Ordering::Relaxed);
        let mut heads = durable.into_iter();
        for (count, reply) in counts.into_iter().zip(replies) {
            let (mut got, mut last) = (0, None);
            for head in heads.by_ref().take(count) {
                (got, last) = (got + 1, Some(head));
            }
            let result = match (got == count, last, &failed) {
                (true, Some(head), _) => Ok(head),
                (_, _, Some(e)) => Err(duplicate(e)),
                _ => Err(AuditError::Io(std::io::Error::other(
                    "the audit record was not written",
                ))),
            };
            // A caller that stopped waiting does not need the answer.
            let _ = reply.send(result);
        }
    }
}

/// Starts a commit task for everything queued, when dropped (after the caller that
/// starts it has let the other ready tasks run, or if that caller is cancelled).
struct Start(Option<Arc<GroupCommit>>);

impl Drop for Start {
    fn drop(&mut self) {
        let Some(commit) = self.0.take() else {
            return;
        };
        let mut guard = Running {
            commit,
            finished: false,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || {
                    guard.commit.commit_all();
                    guard.finish();
                });
            }
            // No runtime to run it on (shutting down): `guard` fails the queued records.
            Err(_) => drop(guard),
        }
    }
}

/// A commit task that ends without finishing (a runtime shutting down drops a blocking
/// task that has not started; a panic) clears `running` and drops what is queued, so
/// that its callers get an error instead of waiting forever, and the next record starts
/// a commit again.
struct Running {
    commit: Arc<GroupCommit>,
    finished: bool,
}

impl Running {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished {
            let mut q = self
                .commit
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            q.running = false;
            q.waiting.clear();
        }
    }
}

/// The same error for another caller of the group.
fn duplicate(e: &AuditError) -> AuditError {
    match e {
        AuditError::Io(io) => AuditError::Io(std::io::Error::new(io.kind(), io.to_string())),
        AuditError::Damaged { file, why } => AuditError::Damaged {
            file: file.clone(),
            why: why.clone(),
        },
        AuditError::Broken(b) => AuditError::Broken(b.clone()),
        AuditError::CutShort(s) => AuditError::CutShort(s.clone()),
    }
}
