//! The agent at run time: the outbox scanner (file-system events plus a periodic rescan,
//! stability, queueing), the dispatcher (deliveries with retries and backoff, what
//! happens to a source file after every receipt) and the inbox receivers (exactly-once,
//! name conflicts, `on_receive`).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::{Notify, watch};

use crate::agent::config::{After, AgentConfig, Inbox, OnConflict, Outbox, Reach};
use crate::agent::inbox;
use crate::agent::live::{Arriving, Live};
use crate::agent::metrics::AgentMetrics;
use crate::agent::queue::{self, Item, NewFile, Queue, QueueError, Received, State, id_text};
use crate::audit::Audit;
use crate::audit::names::Names;
use crate::crypto::file_hash::{FileHash, HashAlg};
use crate::crypto::identity::{Identity, PublicKey};
use crate::crypto::pipeline::CipherPool;
use crate::peers::AddressBook;
use crate::relay::client::{self as relay_client, RelayOptions};
use crate::relay::hello::Role;
use crate::session::Timeouts;
use crate::transfer::dest::Destination;
use crate::transfer::events::Event;
use crate::transfer::protocol::{Refusal, RefusalCode};
use crate::transfer::{ReceivePolicy, Receiver, Recipient, Sender, TransferError, source};
use crate::transport::path::PathKind;

/// How often the dispatcher looks for items that became due.
const DISPATCH_TICK: Duration = Duration::from_millis(500);
/// How often outboxes are scanned while a file waits to be stable.
const STABILITY_TICK: Duration = Duration::from_millis(500);
/// One connection attempt to a direct recipient.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a sender waits at the relay for a recipient that is not there.
const RELAY_WAIT: Duration = Duration::from_secs(5);
/// How long deliveries in flight get to stop on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Errors that stop the agent.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The queue.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A folder, the listener.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The relay's settings.
    #[error("relay: {0}")]
    Relay(#[from] relay_client::JoinError),
    /// The transport.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// Another agent runs with this home (its queue is locked).
    #[error("another conduit agent is running with this home ({0} is locked)")]
    AlreadyRunning(String),
}

/// What the agent reports while it runs (one JSON line each in `conduit agent --json`).
/// File names are as the queue stores them: hashed in names mode hash.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Running: its rules, and the direct address it listens on, if any.
    Started {
        /// Outbox rules.
        outboxes: usize,
        /// Inbox rules.
        inboxes: usize,
        /// The direct listener's address.
        listen: Option<String>,
        /// The metrics endpoint's address.
        metrics: Option<String>,
        /// The web console's address.
        console: Option<String>,
    },
    /// A stable file was queued for a recipient.
    Queued {
        /// The item id.
        item: String,
        /// The file.
        name: String,
        /// The recipient.
        to: String,
    },
    /// A recipient's receipt is in.
    Delivered {
        /// The item id.
        item: String,
        /// The file.
        name: String,
        /// The recipient.
        to: String,
        /// The file's hash (`blake3`, or `sha256` from a FIPS session).
        #[serde(flatten)]
        hash: FileHash,
        /// The recipient had it already and answered with its original receipt.
        repeat: bool,
    },
    /// A delivery will be tried again.
    Retry {
        /// The item id.
        item: String,
        /// The recipient.
        to: String,
        /// Why.
        reason: String,
        /// Seconds until the next attempt.
        in_secs: f64,
    },
    /// A delivery was given up.
    Failed {
        /// The item id.
        item: String,
        /// The file.
        name: String,
        /// The recipient.
        to: String,
        /// Why.
        reason: String,
    },
    /// Every item of a source file is final and its `after` rule carried out.
    FileDone {
        /// The file.
        name: String,
        /// `sent` (moved), `deleted`, `kept`, or `failed` (moved to failed/).
        outcome: &'static str,
    },
    /// A file arrived in an inbox.
    Received {
        /// The sender's name.
        from: String,
        /// The name it got in the inbox.
        name: String,
        /// The item id.
        item: String,
        /// Its hash (`blake3`, or `sha256` from a FIPS session).
        #[serde(flatten)]
        hash: FileHash,
        /// A repeat of an item delivered before: answered with the original receipt.
        repeat: bool,
    },
    /// An `on_receive` program ran.
    Hook {
        /// The received file.
        name: String,
        /// `exit 0`, `killed after the timeout`...
        status: String,
        /// How long it ran.
        millis: u64,
    },
    /// Something went wrong that does not stop the agent.
    Warning {
        /// What.
        message: String,
    },
    /// Stopped on SIGTERM or Ctrl-C; every item is resumable.
    Stopped,
}

/// Where the agent reports its [`AgentEvent`]s.
pub type AgentEvents = Arc<dyn Fn(AgentEvent) + Send + Sync>;

/// Everything the agent runs with.
pub struct Agent {
    /// This endpoint's identity.
    pub identity: Identity,
    /// Its address book.
    pub book: AddressBook,
    /// The checked rules.
    pub config: AgentConfig,
    /// The relay (needed by outboxes without `direct` and by inboxes at the relay).
    pub relay: Option<RelayOptions>,
    /// Timeouts of each transfer.
    pub timeouts: Timeouts,
    /// The audit trail.
    pub audit: Audit,
    /// The queue's database file.
    pub queue_path: PathBuf,
    /// Where events go.
    pub events: AgentEvents,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// State shared by the agent's tasks.
struct Shared {
    agent: Agent,
    names: Names,
    sender: Sender,
    receiver: Receiver,
    /// Wakes the dispatcher (a file was queued).
    wake: Notify,
    /// The counters of `/metrics`.
    metrics: Arc<AgentMetrics>,
    /// Outbox file names by (outbox, stored name): the stored name is a keyed hash in
    /// names mode hash.
    real_names: std::sync::Mutex<HashMap<(String, String), String>>,
    /// Deliveries in flight and queue changes, for the console.
    live: Arc<Live>,
}

impl Shared {
    fn emit(&self, e: AgentEvent) {
        let changes = !matches!(
            e,
            AgentEvent::Warning { .. }
                | AgentEvent::Hook { .. }
                | AgentEvent::Started { .. }
                | AgentEvent::Stopped
        );
        (self.agent.events)(e);
        if changes {
            self.live.changed();
        }
    }

    /// Remembers a peer's completed transfer (the console's Peers page).
    fn seen(&self, q: &mut Queue, key: &str, direction: &str, path: PathKind) {
        if let Err(e) = q.seen(key, direction, path.name()) {
            self.warn(format!("queue: {e}"));
        }
    }

    fn stored(&self, name: &str) -> String {
        self.names.hash(name).unwrap_or_else(|| name.to_string())
    }

    /// A name for [`Audit::agent_item`]: in names mode hash, its keyed hash marked `#`
    /// (so that no name, whatever its first character, is taken for a hash).
    fn audit_name(&self, name: &str) -> String {
        match self.names.hash(name) {
            Some(h) => format!("#{h}"),
            None => name.to_string(),
        }
    }

    fn warn(&self, message: String) {
        self.emit(AgentEvent::Warning { message });
    }
}

/// Aborts a task when dropped (the console's server when the agent stops).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The path's text as the queue keys outboxes by.
fn key_of(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

impl Agent {
    /// Runs every rule until `shutdown` resolves; then deliveries in flight are stopped
    /// (their items stay queued, resumable) and it returns.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        // One agent per home: a second one would scan and send the same outboxes.
        let _lock = lock(&self.queue_path)?;
        // The console's Send page has an outbox of its own, never scanned.
        if self.config.console.is_some() {
            if let Some(home) = self.queue_path.parent() {
                let send = crate::console::send::outbox(home, &self.book);
                self.config.outboxes.push(send);
            }
        }
        let mut q = Queue::open(&self.queue_path)?;
        q.recover()?;
        for o in &self.config.outboxes {
            crate::fsutil::private_dir(&o.path)?;
        }
        for b in &self.config.inboxes {
            crate::fsutil::private_dir(&b.path)?;
        }
        let pool =
            CipherPool::with_all_cores().map_err(|e| std::io::Error::other(e.to_string()))?;
        let sender = Sender::new(self.identity.clone(), Arc::clone(&pool))
            .timeouts(self.timeouts)
            .audit(self.audit.clone());
        let policy = ReceivePolicy {
            timeouts: self.timeouts,
            sessions: Some(Arc::new(tokio::sync::Semaphore::new(self.config.receiving))),
            offers: crate::transfer::Policy { max_entries: 16 },
            // The endpoint's policy as the relay options carry it (a per-peer entry
            // replaces it; a per-peer `auto` cannot when the endpoint keeps to the relay).
            path: match &self.relay {
                Some(o) if !o.punch => crate::transport::path::PathPolicy::Relay,
                _ => crate::transport::path::PathPolicy::Auto,
            },
            ..ReceivePolicy::default()
        };
        let receiver = Receiver::new(self.identity.clone(), self.book.clone(), pool)
            .policy(policy)
            .audit(self.audit.clone());
        let names = self.audit.names();
        let metrics = Arc::new(AgentMetrics::new(self.queue_path.clone()));
        let metrics_at = match self.config.metrics {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let local = listener.local_addr()?;
                tokio::spawn(crate::relay::metrics::serve(listener, Arc::clone(&metrics)));
                Some(local.to_string())
            }
            None => None,
        };
        let live = Arc::new(Live::default());
        let console = match self.config.console {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let local = listener.local_addr()?;
                let mut folders: Vec<(String, PathBuf)> = Vec::new();
                let mut name_dirs = Vec::new();
                for o in &self.config.outboxes {
                    let what = if o.scanned {
                        "outbox"
                    } else {
                        "Send page folder"
                    };
                    folders.push((what.into(), o.path.clone()));
                    name_dirs.extend([o.path.clone(), o.sent_dir(), o.failed_dir()]);
                }
                for b in &self.config.inboxes {
                    folders.push(("inbox".into(), b.path.clone()));
                    name_dirs.push(b.path.clone());
                }
                let console = crate::console::server::Console {
                    home: self
                        .queue_path
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default(),
                    listen: local,
                    queue_path: self.queue_path.clone(),
                    book: self.book.clone(),
                    identity: self.identity.clone(),
                    audit: self.audit.clone(),
                    folders,
                    relay: self.relay.as_ref().map(|r| r.relays.join(", ")),
                    sessions: crate::console::login::Sessions::default(),
                    names: (self.audit.names(), name_dirs),
                    live: Arc::clone(&live),
                    streams: Arc::new(tokio::sync::Semaphore::new(
                        crate::console::server::MAX_STREAMS,
                    )),
                };
                let task = tokio::spawn(crate::console::server::serve(listener, Arc::new(console)));
                Some((local.to_string(), AbortOnDrop(task)))
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            agent: self,
            names,
            sender,
            receiver,
            wake: Notify::new(),
            metrics,
            real_names: std::sync::Mutex::new(HashMap::new()),
            live,
        });
        // What a crash left complete in the inboxes' staging folders is placed first.
        for b in &shared.agent.config.inboxes {
            if let Err(e) = recover_staged(&shared, b, &mut q) {
                shared.warn(format!("inbox {}: {e}", b.path.display()));
            }
        }
        drop(q);
        let (stop, stopping) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let listen = match &shared.agent.config.receive {
            Some(Reach::Listen(addr)) => {
                let endpoint =
                    crate::transport::direct_server_with(*addr, shared.agent.timeouts.idle)?;
                let local = endpoint.local_addr()?;
                tasks.spawn(serve_direct(
                    Arc::clone(&shared),
                    endpoint,
                    stopping.clone(),
                ));
                Some(local.to_string())
            }
            Some(Reach::Relay) => {
                for _ in 0..shared.agent.config.receiving {
                    tasks.spawn(relay_slot(Arc::clone(&shared), stopping.clone()));
                }
                None
            }
            None => None,
        };
        shared.emit(AgentEvent::Started {
            outboxes: shared
                .agent
                .config
                .outboxes
                .iter()
                .filter(|o| o.scanned)
                .count(),
            inboxes: shared.agent.config.inboxes.len(),
            listen,
            metrics: metrics_at,
            console: console.as_ref().map(|(at, _)| at.clone()),
        });
        if !shared.agent.config.outboxes.is_empty() {
            tasks.spawn(scanner(Arc::clone(&shared), stopping.clone()));
            tasks.spawn(dispatcher(Arc::clone(&shared), stopping.clone()));
        }
        shutdown.await;
        shared
            .metrics
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = stop.send(true);
        let _ = tokio::time::timeout(STOP_GRACE * 2, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.shutdown().await;
        // Whatever was being sent is queued again, due at the next start.
        Queue::open(&shared.agent.queue_path)?.recover()?;
        if let Err(e) = shared.agent.audit.flush_suppressed().await {
            shared.warn(e.to_string());
        }
        shared.emit(AgentEvent::Stopped);
        Ok(())
    }
}

/// Takes the exclusive lock of `<queue>.lock` (0600) for as long as the file is held.
fn lock(queue: &Path) -> Result<std::fs::File, AgentError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut path = queue.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            Err(AgentError::AlreadyRunning(path.display().to_string()))
        }
        Err(e) => Err(AgentError::Io(e.into())),
    }
}

/// Resolves when `stopping` turns true.
async fn stopped(mut stopping: watch::Receiver<bool>) {
    while !*stopping.borrow_and_update() {
        if stopping.changed().await.is_err() {
            return;
        }
    }
}

// ---- outboxes: scanning and queueing ----

/// One file seen in an outbox, not yet stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    size: u64,
    mtime_ns: i64,
    since: Instant,
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Watches the outboxes (file-system events, and a scan every `rescan`, every half
/// second while a file waits to be stable) and queues each file once it is stable.
async fn scanner(shared: Arc<Shared>, stopping: watch::Receiver<bool>) {
    let changed = Arc::new(Notify::new());
    let watcher = {
        use notify::Watcher;
        let changed = Arc::clone(&changed);
        match notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
            changed.notify_one();
        }) {
            Ok(mut w) => {
                for o in &shared.agent.config.outboxes {
                    if let Err(e) = w.watch(&o.path, notify::RecursiveMode::NonRecursive) {
                        shared.warn(format!(
                            "watching {}: {e}; relying on the rescan",
                            o.path.display()
                        ));
                    }
                }
                Some(w)
            }
            Err(e) => {
                shared.warn(format!(
                    "file-system events unavailable ({e}); relying on the rescan"
                ));
                None
            }
        }
    };
    let mut q = match Queue::open(&shared.agent.queue_path) {
        Ok(q) => q,
        Err(e) => {
            shared.warn(format!("scanner: {e}"));
            return;
        }
    };
    let mut seen: HashMap<(usize, String), Seen> = HashMap::new();
    let stop = stopped(stopping);
    tokio::pin!(stop);
    loop {
        for (i, o) in shared.agent.config.outboxes.iter().enumerate() {
            if !o.scanned {
                continue;
            }
            if let Err(e) = scan(&shared, &mut q, i, o, &mut seen) {
                shared.warn(format!("outbox {}: {e}", o.path.display()));
            }
        }
        let wait = if seen.is_empty() {
            shared.agent.config.rescan
        } else {
            STABILITY_TICK
        };
        tokio::select! {
            () = &mut stop => break,
            () = changed.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    drop(watcher);
}

/// One scan of outbox `i`.
fn scan(
    shared: &Shared,
    q: &mut Queue,
    i: usize,
    o: &Outbox,
    seen: &mut HashMap<(usize, String), Seen>,
) -> Result<(), AgentError> {
    let outbox = key_of(&o.path);
    let now = Instant::now();
    let mut present = std::collections::HashSet::new();
    for entry in std::fs::read_dir(&o.path)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // Regular files only: no symlink is followed, no folder (sent/, failed/) entered.
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !meta.file_type().is_file() || !o.wants(&name) {
            continue;
        }
        let (size, mtime) = (meta.len(), mtime_ns(&meta));
        let stored = shared.stored(&name);
        if let Ok(mut m) = shared.real_names.lock() {
            m.insert((outbox.clone(), stored.clone()), name.clone());
        }
        present.insert(name.clone());
        if let Some((_, s, t)) = q.pending_file(&outbox, &stored)? {
            if (s, t) == (size, mtime) {
                seen.remove(&(i, name));
                continue;
            }
        }
        if o.after == After::Keep && q.known_version(&outbox, &stored, size, mtime)? {
            seen.remove(&(i, name));
            continue;
        }
        let key = (i, name.clone());
        let stable = match seen.get(&key) {
            Some(s) if s.size == size && s.mtime_ns == mtime => {
                now.duration_since(s.since) >= o.stable_for
            }
            _ => {
                seen.insert(
                    key.clone(),
                    Seen {
                        size,
                        mtime_ns: mtime,
                        since: now,
                    },
                );
                o.stable_for.is_zero()
            }
        };
        if !stable {
            continue;
        }
        seen.remove(&key);
        let to: Vec<(String, String)> =
            o.to.iter()
                .map(|(n, k)| (n.clone(), k.to_string()))
                .collect();
        let ids = q.enqueue(&NewFile {
            outbox: &outbox,
            name: &stored,
            size,
            mtime_ns: mtime,
            to: &to,
        })?;
        for (id, (recipient, key)) in ids.iter().zip(&o.to) {
            let _ = shared.agent.audit.agent_item(
                crate::audit::record::event::ITEM_QUEUED,
                &shared.audit_name(&name),
                size,
                Some(key),
                id,
                None,
            );
            shared.emit(AgentEvent::Queued {
                item: id.clone(),
                name: stored.clone(),
                to: recipient.clone(),
            });
        }
        shared.wake.notify_one();
    }
    seen.retain(|(j, name), _| *j != i || present.contains(name));
    Ok(())
}

// ---- outboxes: delivering ----

/// How one delivery attempt ended.
enum Outcome {
    /// The receipt is in.
    Delivered {
        hash: FileHash,
        repeat: bool,
        path: PathKind,
    },
    /// Try again later: `whole` when the recipient itself is unreachable.
    Retry {
        reason: String,
        whole: bool,
        after: Option<Duration>,
    },
    /// Give up.
    Failed(String),
    /// The agent is stopping.
    Stopped,
}

/// Claims due items, delivers them (`sending` at once), records each outcome, and
/// carries out each finished file's `after` rule.
async fn dispatcher(shared: Arc<Shared>, stopping: watch::Receiver<bool>) {
    let mut q = match Queue::open(&shared.agent.queue_path) {
        Ok(q) => q,
        Err(e) => {
            shared.warn(format!("dispatcher: {e}"));
            return;
        }
    };
    let mut flying = tokio::task::JoinSet::new();
    let stop = stopped(stopping.clone());
    tokio::pin!(stop);
    loop {
        let free = shared.agent.config.sending.saturating_sub(flying.len());
        if free > 0 {
            match q.claim_due(free) {
                Ok(items) => {
                    if !items.is_empty() {
                        shared.live.changed();
                    }
                    for item in items {
                        let (shared, stopping) = (Arc::clone(&shared), stopping.clone());
                        flying.spawn(async move {
                            let outcome = deliver(&shared, &item, stopped(stopping)).await;
                            shared.live.ended(&item.id);
                            (item, outcome)
                        });
                    }
                }
                Err(e) => shared.warn(format!("queue: {e}")),
            }
        }
        if let Err(e) = finish_files(&shared, &mut q) {
            shared.warn(format!("queue: {e}"));
        }
        tokio::select! {
            () = &mut stop => break,
            Some(done) = flying.join_next(), if !flying.is_empty() => {
                if let Ok((item, outcome)) = done {
                    if let Err(e) = record(&shared, &mut q, &item, outcome) {
                        shared.warn(format!("queue: {e}"));
                    }
                }
            }
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(DISPATCH_TICK) => {}
        }
    }
    // Deliveries in flight see the stop, close their connections and end; what they
    // finished is recorded.
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while let Some(done) = flying.join_next().await {
            if let Ok((item, outcome)) = done {
                let _ = record(&shared, &mut q, &item, outcome);
            }
        }
    })
    .await;
}

/// Records the outcome of one attempt.
fn record(shared: &Shared, q: &mut Queue, item: &Item, outcome: Outcome) -> Result<(), QueueError> {
    let key = PublicKey::parse(&item.peer_key).ok();
    let real = match real_name(shared, item) {
        Some(n) => shared.audit_name(&n),
        None if shared.names.hides() => format!("#{}", item.name),
        None => item.name.clone(),
    };
    match outcome {
        Outcome::Delivered { hash, repeat, path } => {
            let tagged = hash.to_tagged();
            q.delivered(&item.id, &tagged)?;
            shared.seen(q, &item.peer_key, "sent", path);
            let m = &shared.metrics;
            m.deliveries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if repeat {
                m.repeats.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                m.bytes_sent
                    .fetch_add(item.size, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = shared.agent.audit.agent_item(
                crate::audit::record::event::ITEM_DELIVERED,
                &real,
                item.size,
                key.as_ref(),
                &item.id,
                Some(&tagged),
            );
            shared.emit(AgentEvent::Delivered {
                item: item.id.clone(),
                name: item.name.clone(),
                to: item.recipient.clone(),
                hash,
                repeat,
            });
        }
        Outcome::Retry {
            reason,
            whole,
            after,
        } => {
            let delay = after
                .unwrap_or_else(|| queue::backoff(item.attempts, shared.agent.config.retry_max));
            let state = q.retry_later(
                &item.id,
                &reason,
                delay,
                shared.agent.config.max_attempts,
                whole,
            )?;
            if state == State::Failed {
                return record(shared, q, item, Outcome::Failed(reason)).map(|_| ());
            }
            shared
                .metrics
                .retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shared.emit(AgentEvent::Retry {
                item: item.id.clone(),
                to: item.recipient.clone(),
                reason,
                in_secs: delay.as_secs_f64(),
            });
        }
        Outcome::Failed(reason) => {
            q.failed(&item.id, &reason)?;
            shared
                .metrics
                .failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = shared.agent.audit.agent_item(
                crate::audit::record::event::ITEM_FAILED,
                &real,
                item.size,
                key.as_ref(),
                &item.id,
                Some(&reason),
            );
            shared.emit(AgentEvent::Failed {
                item: item.id.clone(),
                name: item.name.clone(),
                to: item.recipient.clone(),
                reason,
            });
        }
        Outcome::Stopped => {
            // Left `sending`; queued again when the agent stops or starts.
        }
    }
    shared.wake.notify_one();
    Ok(())
}

/// The real name of an item's file in its outbox (a lookup of the stored hash in names
/// mode hash; a scan of the folder if the scanner has not seen it).
fn real_name(shared: &Shared, item: &Item) -> Option<String> {
    if !shared.names.hides() {
        return Some(item.name.clone());
    }
    let key = (item.outbox.clone(), item.name.clone());
    if let Some(n) = shared
        .real_names
        .lock()
        .ok()
        .and_then(|m| m.get(&key).cloned())
    {
        return Some(n);
    }
    let dir = std::fs::read_dir(&item.outbox).ok()?;
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| shared.stored(n) == item.name)
}

/// One attempt to deliver `item`.
async fn deliver(shared: &Shared, item: &Item, stop: impl Future<Output = ()> + Send) -> Outcome {
    let Some(outbox) = shared
        .agent
        .config
        .outboxes
        .iter()
        .find(|o| key_of(&o.path) == item.outbox)
    else {
        return Outcome::Failed("its outbox is no longer in conduit.toml".into());
    };
    // The recipient's address-book entry: as the agent started, or, for the console's
    // Send page (whose recipients are the whole book), as the book is now, read once per
    // attempt: a peer added since may be sent to, and a changed pin or path policy counts.
    let key = PublicKey::parse(&item.peer_key).ok();
    let peer = key.as_ref().and_then(|key| {
        if outbox.scanned {
            shared.agent.book.find_by_key(key).cloned()
        } else {
            let home = shared.agent.queue_path.parent()?;
            let book = AddressBook::load(&crate::home::Home::at(home)).ok()?;
            book.find_by_key(key).cloned()
        }
    });
    let recipient = match outbox
        .to
        .iter()
        .find(|(_, k)| k.to_string() == item.peer_key)
    {
        Some(r) => r.clone(),
        None => match key.filter(|_| !outbox.scanned && peer.is_some()) {
            Some(key) => (item.recipient.clone(), key),
            None => {
                return Outcome::Failed(format!(
                    "{} is no longer a recipient of this outbox",
                    item.recipient
                ));
            }
        },
    };
    let (Some(id), Some(name)) = (item.id_bytes(), real_name(shared, item)) else {
        return Outcome::Failed("the file is no longer in the outbox".into());
    };
    let path = outbox.path.join(&name);
    match std::fs::symlink_metadata(&path) {
        Ok(m)
            if m.file_type().is_file() && m.len() == item.size && mtime_ns(&m) == item.mtime_ns => {
        }
        Ok(m) if m.file_type().is_file() => {
            // A newer version is queued by the scanner once it is stable.
            return Outcome::Retry {
                reason: "the file changed after it was queued".into(),
                whole: false,
                after: Some(outbox.stable_for + Duration::from_secs(1)),
            };
        }
        _ => return Outcome::Failed("the file is no longer in the outbox".into()),
    }
    let files = match source::collect_with_dirs(std::slice::from_ref(&path)) {
        Ok(f) if f.files.len() == 1 => f,
        Ok(_) => return Outcome::Failed("not a regular file".into()),
        Err(e) => {
            return Outcome::Retry {
                reason: e.to_string(),
                whole: false,
                after: None,
            };
        }
    };
    // A recipient that takes transfers only directly cannot be reached without an
    // address: no retry will change that.
    if outbox.direct.is_none()
        && peer.as_ref().and_then(|p| p.path) == Some(crate::transport::path::PathPolicy::Direct)
    {
        return Outcome::Failed(
            "the address book says this recipient takes transfers only directly (path = direct), and its outbox has no address".into(),
        );
    }
    // In a FIPS build the recipient must be pinned by its FIPS key too: without one no
    // attempt can succeed.
    let to = match &peer {
        Some(peer) => match Recipient::for_peer(peer) {
            Ok(to) => to,
            Err(e) => return Outcome::Failed(e.to_string()),
        },
        None => Recipient::Known(recipient.1),
    };
    let connected = match &outbox.direct {
        Some(addr) => connect_direct(shared, addr).await,
        None => connect_relay(shared, &recipient.1, peer.as_ref().and_then(|p| p.path)).await,
    };
    let (endpoint, conn) = match connected {
        Ok(c) => c,
        Err(reason) => {
            return Outcome::Retry {
                reason,
                whole: true,
                after: None,
            };
        }
    };
    // The console's progress bar: this delivery's bytes.
    shared.live.begin(&item.id, item.size);
    let (live, live_id) = (Arc::clone(&shared.live), item.id.clone());
    let sender = shared.sender.clone().events(Arc::new(move |_, e| {
        if let Event::Progress { bytes, total } = e {
            live.progress(&live_id, bytes, total);
        }
    }));
    let result = sender.send_item(&conn, &to, &files, id, stop).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    match result {
        Ok(sent) => match sent.summary.files.first() {
            Some((_, _, h)) => Outcome::Delivered {
                hash: *h,
                repeat: sent.repeat,
                path: sent.summary.path,
            },
            None => Outcome::Failed("the receipt names no file".into()),
        },
        Err(e) => classify(e),
    }
}

/// Whether a failed attempt is worth another.
fn classify(e: TransferError) -> Outcome {
    use crate::crypto::handshake::{AbortReason, HandshakeError};
    let reason = e.to_string();
    match &e {
        TransferError::Cancelled => Outcome::Stopped,
        TransferError::Busy => Outcome::Retry {
            reason,
            whole: true,
            after: None,
        },
        TransferError::Refused(r) => match r.code {
            // Passing: the receiver may free space, or was busy.
            RefusalCode::NoSpace => Outcome::Retry {
                reason,
                whole: true,
                after: None,
            },
            RefusalCode::Policy
                if r.detail.as_deref() == Some(&TransferError::Busy.to_string()) =>
            {
                Outcome::Retry {
                    reason,
                    whole: true,
                    after: None,
                }
            }
            _ => Outcome::Failed(format!("refused: {}", r.explain())),
        },
        TransferError::ReceiptMismatch(_) => Outcome::Failed(reason),
        TransferError::Data {
            source: crate::transfer::data::DataError::SourceChanged(_),
            ..
        } => Outcome::Retry {
            reason,
            whole: false,
            after: Some(Duration::from_secs(2)),
        },
        _ if matches!(
            e.handshake_error(),
            Some(HandshakeError::PeerAborted(AbortReason::UnknownPeer))
        ) =>
        {
            Outcome::Failed("the recipient does not know this endpoint (unknown sender)".into())
        }
        _ => Outcome::Retry {
            reason,
            whole: true,
            after: None,
        },
    }
}

/// Connects to `addr` (`HOST:PORT`): a name is resolved at each attempt (its addresses
/// may change while items wait) and every address it has is tried.
async fn connect_direct(
    shared: &Shared,
    addr: &str,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let addrs = crate::transport::addr::resolve(addr)
        .await
        .map_err(|e| e.to_string())?;
    let idle = shared.agent.timeouts.idle;
    crate::transport::addr::connect_direct(&addrs, CONNECT_TIMEOUT, idle)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))
}

async fn connect_relay(
    shared: &Shared,
    key: &PublicKey,
    policy: Option<crate::transport::path::PathPolicy>,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let Some(opts) = &shared.agent.relay else {
        return Err("no relay configured".into());
    };
    let mut opts = opts.clone();
    opts.wait = opts.wait.min(RELAY_WAIT);
    // The recipient's own path policy in the address book (`direct` never gets here).
    match policy {
        Some(crate::transport::path::PathPolicy::Relay) => opts.punch = false,
        Some(crate::transport::path::PathPolicy::Auto) => opts.punch = true,
        _ => {}
    }
    let rendezvous = crate::transfer::rendezvous_for(key);
    match relay_client::join(&opts, Role::Connect, false, rendezvous).await {
        Ok(j) => {
            shared
                .live
                .relay(true, "a delivery connected through it".into());
            Ok((j.endpoint, j.connection))
        }
        Err(e) => {
            // A refusal (the recipient is not there) is an answer from the relay.
            shared.live.relay(relay_works(&e), e.to_string());
            Err(format!("the recipient is not reachable at the relay: {e}"))
        }
    }
}

/// Whether the relay works for this endpoint although joining it failed: it answered that
/// the peer is not there (or gave up waiting for one), which says nothing against the
/// relay. A refused token or proof, a relay that is busy, rate-limits us or shuts down
/// is a problem to show.
fn relay_works(e: &relay_client::JoinError) -> bool {
    use crate::relay::hello::Refusal;
    matches!(
        e,
        relay_client::JoinError::Refused {
            refusal: Refusal::NoListener | Refusal::PairingTimeout | Refusal::PeerLost,
            ..
        }
    )
}

/// Carries out the `after` rule of every file whose items are all final: with every
/// receipt in, move it to `sent/`, delete it or keep it; otherwise move it to `failed/`
/// with a reason file.
fn finish_files(shared: &Shared, q: &mut Queue) -> Result<(), QueueError> {
    for f in q.finished_files()? {
        let Some(outbox) = shared
            .agent
            .config
            .outboxes
            .iter()
            .find(|o| key_of(&o.path) == f.outbox)
        else {
            q.file_done(f.file)?;
            continue;
        };
        let probe = Item {
            id: String::new(),
            file: f.file,
            outbox: f.outbox.clone(),
            name: f.name.clone(),
            size: 0,
            mtime_ns: 0,
            recipient: String::new(),
            peer_key: String::new(),
            state: State::Delivered,
            attempts: 0,
            next_attempt_ms: 0,
            created_ms: 0,
            receipt: None,
            reason: None,
            updated_ms: 0,
        };
        let real = real_name(shared, &probe);
        let outcome = match (&f.failure, real) {
            // Gone already (a crash after the move, or the operator).
            (_, None) => "gone",
            (None, Some(name)) => match outbox.after {
                After::Move => {
                    let from = outbox.path.join(&name);
                    match inbox::place(&from, &outbox.sent_dir(), &name, OnConflict::Rename) {
                        Ok(_) => "sent",
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "gone",
                        Err(e) => {
                            shared.warn(format!("moving a sent file into sent/: {e}"));
                            continue;
                        }
                    }
                }
                After::Delete => match std::fs::remove_file(outbox.path.join(&name)) {
                    Ok(()) => "deleted",
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => "gone",
                    Err(e) => {
                        shared.warn(format!("deleting a sent file: {e}"));
                        continue;
                    }
                },
                After::Keep => "kept",
            },
            (Some(reason), Some(name)) => {
                let from = outbox.path.join(&name);
                match inbox::place(&from, &outbox.failed_dir(), &name, OnConflict::Rename) {
                    Ok(placed) => {
                        let mut why = placed.clone().into_os_string();
                        why.push(".reason.txt");
                        let text = format!("{reason}\n");
                        if let Err(e) =
                            crate::fsutil::write_atomic(Path::new(&why), text.as_bytes(), 0o600)
                        {
                            shared.warn(format!("writing the reason file: {e}"));
                        }
                        "failed"
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => "gone",
                    Err(e) => {
                        shared.warn(format!("moving a file into failed/: {e}"));
                        continue;
                    }
                }
            }
        };
        q.file_done(f.file)?;
        shared.emit(AgentEvent::FileDone {
            name: f.name.clone(),
            outcome,
        });
    }
    Ok(())
}

// ---- inboxes ----

/// The direct listener: each connection in its own task, within the receiving limit.
async fn serve_direct(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    stopping: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let stop = stopped(stopping.clone());
    tokio::pin!(stop);
    let most = shared.agent.config.receiving + crate::agent::run::PENDING;
    loop {
        tokio::select! {
            () = &mut stop => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if tasks.len() >= most {
                    incoming.refuse();
                    continue;
                }
                let (shared, stopping) = (Arc::clone(&shared), stopping.clone());
                tasks.spawn(async move {
                    let handshake = shared.agent.timeouts.handshake;
                    let Ok(connecting) = incoming.accept() else { return };
                    let Ok(Ok(conn)) = tokio::time::timeout(handshake, connecting).await else { return };
                    receive_one(&shared, &conn, stopped(stopping)).await;
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

/// Connections at once still in their handshake, beyond the transfers.
const PENDING: usize = 16;

/// One listener slot at the relay: wait, receive, repeat; backoff while the relay is
/// unreachable.
async fn relay_slot(shared: Arc<Shared>, stopping: watch::Receiver<bool>) {
    let Some(opts) = shared.agent.relay.clone() else {
        return;
    };
    let mut backoff = Duration::from_secs(1);
    let stop = stopped(stopping.clone());
    tokio::pin!(stop);
    let listening = |_: &str| {
        shared
            .live
            .relay(true, "listening there for transfers".into());
    };
    loop {
        let joined = tokio::select! {
            j = relay_client::listen_reporting(&opts, shared.receiver.identity(), &listening) => j,
            () = &mut stop => return,
        };
        let j = match joined {
            Ok(j) => {
                shared
                    .live
                    .relay(true, "a sender met this endpoint there".into());
                j
            }
            Err(relay_client::JoinError::Refused {
                refusal: crate::relay::hello::Refusal::PairingTimeout,
                ..
            }) => {
                shared
                    .live
                    .relay(true, "listening there for transfers".into());
                continue;
            }
            Err(e) => {
                shared.live.relay(relay_works(&e), e.to_string());
                shared.warn(format!("relay: {e}; retrying in {} s", backoff.as_secs()));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut stop => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        receive_one(&shared, &j.connection, stopped(stopping.clone())).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), j.endpoint.wait_idle()).await;
        if *stopping.borrow() {
            return;
        }
    }
}

/// One incoming transfer: the sender's inbox, exactly-once by (sender, item), the file
/// received into the inbox's staging folder and then given its name by the conflict rule.
async fn receive_one(
    shared: &Shared,
    conn: &quinn::Connection,
    stop: impl Future<Output = ()> + Send,
) {
    // The console's Inbox: the file arriving and its bytes, under a name of its own
    // until the transfer ends (however it ends).
    let arrival = Arrival(Arc::clone(&shared.live), shared.live.next_arrival());
    shared.live.begin(&arrival.1, 0);
    let (live, id) = (Arc::clone(&shared.live), arrival.1.clone());
    let receiver = shared
        .receiver
        .clone()
        .events(Arc::new(move |names, e| match e {
            Event::Offer {
                peer,
                total,
                top_level,
                ..
            } => live.arrival(
                &id,
                Arriving {
                    from: peer,
                    name: (!names.hides())
                        .then(|| top_level.into_iter().next())
                        .flatten(),
                    total,
                },
            ),
            Event::Progress { bytes, total } => live.progress(&id, bytes, total),
            _ => {}
        }));
    let offer = match receiver.receive(conn, stop).await {
        Ok(o) => o,
        Err(_) => return,
    };
    let peer = offer.peer();
    let from = shared
        .agent
        .book
        .find_by_key(&peer)
        .map_or_else(|| peer.fingerprint().to_string(), |p| p.name.clone());
    let refuse = |why: &str| Refusal::new(RefusalCode::Policy, why.to_string());
    let Some(inbox) = shared.agent.config.inbox_for(&peer) else {
        let _ = offer
            .refuse(refuse("this endpoint has no inbox for this sender"))
            .await;
        return;
    };
    let Some(item) = offer.item() else {
        let _ = offer
            .refuse(refuse(
                "this endpoint's agent receives from conduit agents only",
            ))
            .await;
        return;
    };
    let one = offer.offer().entries.len() == 1
        && offer.offer().dirs.is_empty()
        && !offer.offer().entries[0].0.as_str().contains('/');
    if !one {
        let _ = offer
            .refuse(refuse("one file at the top level per item"))
            .await;
        return;
    }
    let (rel, entry) = offer.offer().entries[0].clone();
    let name = rel.as_str().to_string();
    let sender_key = peer.to_string();
    let item_text = id_text(&item);
    let mut q = match Queue::open(&shared.agent.queue_path) {
        Ok(q) => q,
        Err(e) => {
            shared.warn(format!("queue: {e}"));
            let _ = offer
                .refuse(refuse("the receiver's queue is not available"))
                .await;
            return;
        }
    };
    // A repeat: the original receipt, no second copy.
    let before = q.received(&sender_key, &item_text).ok().flatten();
    if let Some(r) = before.and_then(|r| FileHash::parse_tagged(&r.hash).map(|h| (h, r))) {
        let (hash, r) = r;
        if offer.already_delivered(&[hash]).await.is_ok() {
            shared.emit(AgentEvent::Received {
                from,
                name: r.name,
                item: item_text,
                hash,
                repeat: true,
            });
        }
        return;
    }
    let staging = inbox::staging_dir(&inbox.path, &sender_key, &item_text);
    // A copy that a crash left complete in staging (received, not yet recorded).
    if let Some(hash) = inbox::staged_copy(&staging, &name, entry.size, offer.file_hash()) {
        if let Err(e) = settle(
            shared,
            &mut q,
            inbox,
            &staging,
            &name,
            entry.size,
            hash,
            &sender_key,
            &item_text,
            &from,
            true,
        ) {
            shared.warn(format!("inbox {}: {e}", inbox.path.display()));
            let _ = offer
                .refuse(refuse("the receiver could not place the file"))
                .await;
            return;
        }
        let _ = offer.already_delivered(&[hash]).await;
        return;
    }
    if inbox.on_conflict == OnConflict::Refuse && inbox.path.join(&name).exists() {
        let _ = offer
            .refuse(Refusal::new(RefusalCode::Exists, name.clone()))
            .await;
        return;
    }
    let dest = match crate::fsutil::private_dir(&staging)
        .map_err(|e| e.to_string())
        .and_then(|()| Destination::open(&staging).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            shared.warn(format!("inbox {}: {e}", inbox.path.display()));
            let _ = offer
                .refuse(refuse("the receiver could not prepare its inbox"))
                .await;
            return;
        }
    };
    let summary = match offer.accept(&dest).await {
        Ok(s) => s,
        Err(_) => return, // partial data stays in staging for the retry
    };
    let Some((_, size, hash)) = summary.files.first().cloned() else {
        return;
    };
    shared.seen(&mut q, &sender_key, "received", summary.path);
    if let Err(e) = settle(
        shared,
        &mut q,
        inbox,
        &staging,
        &name,
        size,
        hash,
        &sender_key,
        &item_text,
        &from,
        false,
    ) {
        shared.warn(format!("inbox {}: {e}", inbox.path.display()));
    }
}

/// Ends an incoming transfer's entry in [`Live`] when dropped.
struct Arrival(Arc<Live>, String);

impl Drop for Arrival {
    fn drop(&mut self) {
        self.0.arrival_ended(&self.1);
    }
}

/// Remembers a received item, then gives the staged file its name in the inbox and runs
/// the `on_receive` program.
#[allow(clippy::too_many_arguments)]
fn settle(
    shared: &Shared,
    q: &mut Queue,
    inbox_rule: &Inbox,
    staging: &Path,
    name: &str,
    size: u64,
    hash: FileHash,
    sender_key: &str,
    item: &str,
    from: &str,
    recovered: bool,
) -> Result<(), AgentError> {
    let stored = shared.stored(name);
    q.remember_received(
        sender_key,
        item,
        &Received {
            hash: hash.to_tagged(),
            size,
            inbox: key_of(&inbox_rule.path),
            name: stored.clone(),
        },
    )?;
    let placed = inbox::place(
        &staging.join(name),
        &inbox_rule.path,
        name,
        inbox_rule.on_conflict,
    )?;
    shared
        .metrics
        .received
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared
        .metrics
        .bytes_received
        .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
    let _ = std::fs::remove_dir_all(staging);
    // The sender's folder goes too once it holds no other item.
    if let Some(sender_dir) = staging.parent() {
        let _ = std::fs::remove_dir(sender_dir);
    }
    let placed_name = placed
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The name it landed under (another one after a conflict), for the console's inbox.
    if placed_name != name {
        if let Err(e) = q.placed(sender_key, item, &shared.stored(&placed_name)) {
            // Only the console's display: the file is placed, the hook still runs.
            shared.warn(format!("queue: {e}"));
        }
    }
    shared.emit(AgentEvent::Received {
        from: from.to_string(),
        name: shared.stored(&placed_name),
        item: item.to_string(),
        hash,
        repeat: recovered,
    });
    if let Some(argv) = &inbox_rule.on_receive {
        let ran = inbox::run_hook(
            argv,
            &placed,
            from,
            sender_key,
            &hash,
            size,
            inbox_rule.hook_timeout,
        );
        let (status, millis) = match ran {
            Ok((status, took)) => (status, u64::try_from(took.as_millis()).unwrap_or(u64::MAX)),
            Err(e) => (format!("not run: {e}"), 0),
        };
        let _ = shared.agent.audit.hook_ran(&placed_name, &status, millis);
        shared.emit(AgentEvent::Hook {
            name: shared.stored(&placed_name),
            status,
            millis,
        });
    }
    Ok(())
}

/// Places what a crash left complete in an inbox's staging folders.
fn recover_staged(shared: &Shared, b: &Inbox, q: &mut Queue) -> Result<(), AgentError> {
    for (sender_key, item, name, size) in inbox::staged(&b.path)? {
        let staging = inbox::staging_dir(&b.path, &sender_key, &item);
        // Hashed as this build's sessions hash: a FIPS build talks only FIPS sessions,
        // a default build none (docs/FIPS.md), so the sender's retry checks this hash.
        let Some(hash) = inbox::staged_copy(&staging, &name, size, HashAlg::of_this_build()) else {
            continue;
        };
        let from = PublicKey::parse(&sender_key)
            .ok()
            .and_then(|k| shared.agent.book.find_by_key(&k).map(|p| p.name.clone()))
            .unwrap_or_else(|| "unknown".into());
        settle(
            shared,
            q,
            b,
            &staging,
            &name,
            size,
            hash,
            &sender_key,
            &item,
            &from,
            true,
        )?;
    }
    Ok(())
}
