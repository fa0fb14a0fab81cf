//! The agent's durable queue: an SQLite database (`agent.db` in the home, WAL mode, file
//! 0600) holding every outbox file and one delivery item per recipient, and, on the
//! receiving side, what this endpoint has delivered into its inboxes (for exactly-once).
//!
//! Every state change is one committed transaction before the action it stands for, so a
//! kill at any moment loses nothing: an item caught `sending` goes back to `queued` at the
//! next start ([`Queue::recover`]) and is sent again under the same item id, which the
//! receiver recognises ([`Queue::received`]) and answers with the original receipt.
//!
//! Names of files are stored as the caller gives them: the agent gives the keyed hash of
//! each name in names mode `hash` (`--audit-names`), so the database holds no file name.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use thiserror::Error;

/// The database's file name in the home.
pub const FILE_NAME: &str = "agent.db";
/// How long a statement waits for another process's lock (`conduit queue` while the
/// agent runs) before it fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The schema, one migration per version (`PRAGMA user_version` is the number applied).
const MIGRATIONS: &[&str] = &[
    // 1: files, their delivery items, and what was received.
    "CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        outbox TEXT NOT NULL,
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX files_by_name ON files (outbox, name, state);
    CREATE TABLE items (
        id TEXT PRIMARY KEY,
        file INTEGER NOT NULL REFERENCES files (id),
        recipient TEXT NOT NULL,
        peer_key TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        receipt TEXT,
        reason TEXT
    );
    CREATE INDEX items_due ON items (state, next_attempt_ms);
    CREATE INDEX items_by_file ON items (file);
    CREATE TABLE received (
        sender TEXT NOT NULL,
        item TEXT NOT NULL,
        blake3 TEXT NOT NULL, -- the file hash, FileHash::to_tagged (the column is named for its first algorithm)
        size INTEGER NOT NULL,
        inbox TEXT NOT NULL,
        name TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (sender, item)
    );",
    // 2: each peer's last completed transfer (the console's Peers page), and the orders
    // the console's pages read in (a page of 100 from 10,000 items without a sort).
    "CREATE TABLE peers_seen (
        peer_key TEXT PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        direction TEXT NOT NULL, -- sent or received
        path TEXT NOT NULL       -- direct or relayed, at the end of the transfer
    );
    CREATE INDEX items_by_created ON items (created_ms, id);
    CREATE INDEX received_by_time ON received (at_ms, item);",
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Errors of the queue.
#[derive(Debug, Error)]
pub enum QueueError {
    /// The database failed.
    #[error("agent queue: {0}")]
    Db(#[from] rusqlite::Error),
    /// Its file or folder.
    #[error("agent queue: {0}")]
    Io(#[from] std::io::Error),
    /// Written by a newer version of conduit.
    #[error("agent queue: schema version {found} is newer than this conduit's {known}")]
    Newer {
        /// The database's version.
        found: u32,
        /// This code's.
        known: u32,
    },
    /// No item with that id (or prefix).
    #[error("no queue item {0:?}")]
    NoItem(String),
    /// The id prefix matches several items.
    #[error("queue item {0:?} is ambiguous: give more of its id")]
    Ambiguous(String),
    /// The item is not in a state the operation applies to.
    #[error("queue item {id} is {state}: {what}")]
    WrongState {
        /// The item.
        id: String,
        /// Its state.
        state: State,
        /// Why nothing was done.
        what: &'static str,
    },
}

/// The state of a delivery item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for its next attempt.
    Queued,
    /// Being sent now (back to queued after a crash).
    Sending,
    /// The receipt is in.
    Delivered,
    /// Given up, with a reason.
    Failed,
    /// Cancelled by the operator.
    Cancelled,
}

impl State {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Sending => "sending",
            State::Delivered => "delivered",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> rusqlite::Result<Self> {
        Ok(match s {
            "queued" => State::Queued,
            "sending" => State::Sending,
            "delivered" => State::Delivered,
            "failed" => State::Failed,
            "cancelled" => State::Cancelled,
            other => {
                return Err(rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    format!("unknown item state {other:?}").into(),
                ));
            }
        })
    }

    /// Whether nothing more happens to the item.
    pub fn is_final(self) -> bool {
        matches!(self, State::Delivered | State::Failed | State::Cancelled)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One delivery: a file version to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// The item id (32 hex digits), stable across retries; sent in the offer.
    pub id: String,
    /// The file row.
    pub file: i64,
    /// The outbox folder.
    pub outbox: String,
    /// The file's name in the outbox (or its keyed hash in names mode hash).
    pub name: String,
    /// The size queued.
    pub size: u64,
    /// The mtime queued, in nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// The recipient's name in the address book.
    pub recipient: String,
    /// The recipient's key (key text).
    pub peer_key: String,
    /// The state.
    pub state: State,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (ms since the epoch).
    pub next_attempt_ms: i64,
    /// When it was queued (ms since the epoch).
    pub created_ms: i64,
    /// The receipt's file hash once delivered (hex of BLAKE3, or `sha256:` and hex).
    pub receipt: Option<String>,
    /// Why it failed or is being retried.
    pub reason: Option<String>,
    /// When its state last changed (ms since the epoch): the delivery's time once
    /// delivered.
    pub updated_ms: i64,
}

impl Item {
    /// The item id as the 16 bytes sent in the offer.
    pub fn id_bytes(&self) -> Option<[u8; 16]> {
        parse_id(&self.id)
    }
}

/// The 16 bytes of an item id in hex.
pub fn parse_id(id: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    if id.len() != 32 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(id.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// An item id's hex text.
pub fn id_text(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file version to queue, with its recipients.
#[derive(Debug, Clone)]
pub struct NewFile<'a> {
    /// The outbox folder.
    pub outbox: &'a str,
    /// The stored name.
    pub name: &'a str,
    /// Its size.
    pub size: u64,
    /// Its mtime (ns).
    pub mtime_ns: i64,
    /// The recipients: name and key text.
    pub to: &'a [(String, String)],
}

/// A file whose items are all final, with what became of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The file row.
    pub file: i64,
    /// The outbox folder.
    pub outbox: String,
    /// The stored name.
    pub name: String,
    /// The first failure or cancellation reason, if any item did not arrive.
    pub failure: Option<String>,
}

/// What was received under one (sender, item id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The file's hash, as [`crate::crypto::file_hash::FileHash::to_tagged`] writes it
    /// (hex of BLAKE3, or `sha256:` and hex).
    pub hash: String,
    /// Its size.
    pub size: u64,
    /// The inbox.
    pub inbox: String,
    /// The stored name it got there.
    pub name: String,
}

/// One row of [`Queue::received_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedItem {
    /// The sender's key text.
    pub sender: String,
    /// The item id.
    pub item: String,
    /// When it was recorded (ms since the epoch).
    pub at_ms: i64,
    /// What arrived.
    pub received: Received,
}

/// Counts for `agent status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Items waiting.
    pub queued: u64,
    /// Items being sent.
    pub sending: u64,
    /// Items delivered.
    pub delivered: u64,
    /// Items given up.
    pub failed: u64,
    /// Items cancelled.
    pub cancelled: u64,
    /// Age of the oldest item not yet final, in seconds.
    pub oldest_pending_secs: Option<u64>,
    /// Files received into the inboxes.
    pub received: u64,
}

/// The queue: one SQLite connection.
#[derive(Debug)]
pub struct Queue {
    db: Connection,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Queue {
    /// Opens (or creates, 0600) the database at `path`: WAL mode, a busy timeout, the
    /// migrations up to [`SCHEMA_VERSION`] applied in one transaction each.
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        if !path.exists() {
            // Created 0600 before SQLite opens it, so it is never readable by others.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)?;
        }
        let db = Connection::open(path)?;
        db.busy_timeout(BUSY_TIMEOUT)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        let mut q = Queue { db };
        q.migrate()?;
        // The WAL and shared-memory files SQLite made take the database's mode; keep
        // them private too.
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            if p.exists() {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        Ok(q)
    }

    /// The database of `home`.
    pub fn open_in(home: &crate::home::Home) -> Result<Self, QueueError> {
        crate::fsutil::private_dir(home.path())?;
        Self::open(&home.path().join(FILE_NAME))
    }

    fn migrate(&mut self) -> Result<(), QueueError> {
        let found: u32 = self
            .db
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(QueueError::Newer {
                found,
                known: SCHEMA_VERSION,
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.db.transaction()?;
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", i as u32 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The schema version of the database.
    pub fn version(&self) -> Result<u32, QueueError> {
        Ok(self
            .db
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Items caught `sending` by a crash or a stop go back to `queued`, due now.
    pub fn recover(&mut self) -> Result<usize, QueueError> {
        let now = now_ms();
        Ok(self.db.execute(
            "UPDATE items SET state = 'queued', next_attempt_ms = ?1, updated_ms = ?1
             WHERE state = 'sending'",
            params![now],
        )?)
    }

    /// The file row of `outbox`/`name` still being delivered, with its size and mtime.
    pub fn pending_file(
        &self,
        outbox: &str,
        name: &str,
    ) -> Result<Option<(i64, u64, i64)>, QueueError> {
        Ok(self
            .db
            .query_row(
                "SELECT id, size, mtime_ns FROM files
                 WHERE outbox = ?1 AND name = ?2 AND state = 'pending'",
                params![outbox, name],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?)),
            )
            .optional()?)
    }

    /// Whether this exact version (name, size, mtime) of a file was ever queued.
    pub fn known_version(
        &self,
        outbox: &str,
        name: &str,
        size: u64,
        mtime_ns: i64,
    ) -> Result<bool, QueueError> {
        Ok(self
            .db
            .query_row(
                "SELECT 1 FROM files WHERE outbox = ?1 AND name = ?2 AND size = ?3 AND mtime_ns = ?4",
                params![outbox, name, size as i64, mtime_ns],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Queues a file version with one item per recipient, all due now, in one
    /// transaction; a pending older version of the same name is superseded (its items
    /// not yet delivered are cancelled). Returns the new items' ids.
    pub fn enqueue(&mut self, f: &NewFile<'_>) -> Result<Vec<String>, QueueError> {
        let now = now_ms();
        let tx = self.db.transaction()?;
        let old: Option<i64> = tx
            .query_row(
                "SELECT id FROM files WHERE outbox = ?1 AND name = ?2 AND state = 'pending'",
                params![f.outbox, f.name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(old) = old {
            tx.execute(
                "UPDATE items SET state = 'cancelled', reason = 'superseded by a newer version of the file', updated_ms = ?2
                 WHERE file = ?1 AND state IN ('queued', 'sending')",
                params![old, now],
            )?;
            tx.execute(
                "UPDATE files SET state = 'superseded' WHERE id = ?1",
                params![old],
            )?;
        }
        tx.execute(
            "INSERT INTO files (outbox, name, size, mtime_ns, state, created_ms)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
            params![f.outbox, f.name, f.size as i64, f.mtime_ns, now],
        )?;
        let file = tx.last_insert_rowid();
        let mut ids = Vec::new();
        for (recipient, key) in f.to {
            let id = new_id()?;
            tx.execute(
                "INSERT INTO items (id, file, recipient, peer_key, state, next_attempt_ms, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?5, ?5)",
                params![id, file, recipient, key, now],
            )?;
            ids.push(id);
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Takes up to `limit` items due now, marking them `sending` in one transaction.
    pub fn claim_due(&mut self, limit: usize) -> Result<Vec<Item>, QueueError> {
        let now = now_ms();
        let tx = self.db.transaction()?;
        let mut claimed = Vec::new();
        {
            let mut stmt = tx.prepare(&format!(
                "{SELECT_ITEM} WHERE i.state = 'queued' AND i.next_attempt_ms <= ?1
                 ORDER BY i.next_attempt_ms, i.created_ms LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![now, limit as i64], item_row)?;
            for r in rows {
                claimed.push(r?);
            }
        }
        for item in &mut claimed {
            tx.execute(
                "UPDATE items SET state = 'sending', updated_ms = ?2 WHERE id = ?1",
                params![item.id, now],
            )?;
            item.state = State::Sending;
        }
        tx.commit()?;
        Ok(claimed)
    }

    /// The receipt is in: the item is delivered, with the file's hash (as
    /// [`crate::crypto::file_hash::FileHash::to_tagged`] writes it).
    pub fn delivered(&mut self, id: &str, hash: &str) -> Result<(), QueueError> {
        self.db.execute(
            "UPDATE items SET state = 'delivered', receipt = ?2, reason = NULL, attempts = attempts + 1, updated_ms = ?3
             WHERE id = ?1",
            params![id, hash, now_ms()],
        )?;
        Ok(())
    }

    /// A passing failure: the item waits `delay` (and so does every queued item to the
    /// same recipient, which is as unreachable), with the reason; after `max_attempts`
    /// (0: never) it is given up instead. Returns the item's state.
    pub fn retry_later(
        &mut self,
        id: &str,
        reason: &str,
        delay: Duration,
        max_attempts: u32,
        whole_recipient: bool,
    ) -> Result<State, QueueError> {
        let now = now_ms();
        let next = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        let tx = self.db.transaction()?;
        let (attempts, key): (u32, String) = tx.query_row(
            "SELECT attempts, peer_key FROM items WHERE id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let attempts = attempts + 1;
        let state = if max_attempts > 0 && attempts >= max_attempts {
            tx.execute(
                "UPDATE items SET state = 'failed', attempts = ?2, reason = ?3, updated_ms = ?4
                 WHERE id = ?1 AND state = 'sending'",
                params![
                    id,
                    attempts,
                    format!("gave up after {attempts} attempts: {reason}"),
                    now
                ],
            )?;
            State::Failed
        } else {
            tx.execute(
                "UPDATE items SET state = 'queued', attempts = ?2, reason = ?3, next_attempt_ms = ?4, updated_ms = ?5
                 WHERE id = ?1 AND state = 'sending'",
                params![id, attempts, reason, next, now],
            )?;
            if whole_recipient {
                tx.execute(
                    "UPDATE items SET next_attempt_ms = MAX(next_attempt_ms, ?2)
                     WHERE peer_key = ?1 AND state = 'queued'",
                    params![key, next],
                )?;
            }
            State::Queued
        };
        tx.commit()?;
        Ok(state)
    }

    /// A permanent failure: the item being sent is given up with `reason` (one cancelled
    /// or superseded meanwhile stays so).
    pub fn failed(&mut self, id: &str, reason: &str) -> Result<(), QueueError> {
        self.db.execute(
            "UPDATE items SET state = 'failed', reason = ?2, attempts = attempts + 1, updated_ms = ?3
             WHERE id = ?1 AND state = 'sending'",
            params![id, reason, now_ms()],
        )?;
        Ok(())
    }

    /// Pending files whose items are all final.
    pub fn finished_files(&self) -> Result<Vec<Finished>, QueueError> {
        let mut stmt = self.db.prepare(
            "SELECT f.id, f.outbox, f.name,
                    (SELECT COALESCE(i.reason, i.state) FROM items i
                     WHERE i.file = f.id AND i.state IN ('failed', 'cancelled') LIMIT 1)
             FROM files f
             WHERE f.state = 'pending'
               AND NOT EXISTS (SELECT 1 FROM items i WHERE i.file = f.id AND i.state IN ('queued', 'sending'))",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Finished {
                file: r.get(0)?,
                outbox: r.get(1)?,
                name: r.get(2)?,
                failure: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The source file's fate is carried out (moved, deleted, kept or put in `failed/`).
    pub fn file_done(&mut self, file: i64) -> Result<(), QueueError> {
        self.db.execute(
            "UPDATE files SET state = 'done' WHERE id = ?1",
            params![file],
        )?;
        Ok(())
    }

    /// Every item, newest first (at most `limit`).
    pub fn list(&self, limit: usize) -> Result<Vec<Item>, QueueError> {
        let mut stmt = self.db.prepare(&format!(
            "{SELECT_ITEM} ORDER BY i.created_ms DESC, i.id DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map(params![limit as i64], item_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A page of items, newest first: `limit` of them after the first `offset`.
    pub fn list_page(&self, offset: usize, limit: usize) -> Result<Vec<Item>, QueueError> {
        let mut stmt = self.db.prepare(&items_page_sql())?;
        let rows = stmt.query_map(params![limit as i64, offset as i64], item_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A page of what the inboxes received, newest first: `limit` after the first
    /// `offset`.
    pub fn received_page(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<ReceivedItem>, QueueError> {
        let mut stmt = self.db.prepare(RECEIVED_PAGE)?;
        let rows = stmt.query_map(params![limit as i64, offset as i64], |r| {
            Ok(ReceivedItem {
                sender: r.get(0)?,
                item: r.get(1)?,
                at_ms: r.get(6)?,
                received: Received {
                    hash: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                    inbox: r.get(4)?,
                    name: r.get(5)?,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The item whose id is `id` or starts with it.
    pub fn find(&self, id: &str) -> Result<Item, QueueError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(QueueError::NoItem(id.to_string()));
        }
        let mut stmt = self
            .db
            .prepare(&format!("{SELECT_ITEM} WHERE i.id LIKE ?1 LIMIT 2"))?;
        let found: Vec<Item> = stmt
            .query_map(params![format!("{}%", id.to_ascii_lowercase())], item_row)?
            .collect::<Result<_, _>>()?;
        match found.len() {
            0 => Err(QueueError::NoItem(id.to_string())),
            1 => Ok(found
                .into_iter()
                .next()
                .ok_or_else(|| QueueError::NoItem(id.to_string()))?),
            _ => Err(QueueError::Ambiguous(id.to_string())),
        }
    }

    /// `queue retry`: a queued or failed item is due now again (a failed one only while
    /// its file is still pending).
    pub fn retry_now(&mut self, id: &str) -> Result<Item, QueueError> {
        let item = self.find(id)?;
        let tx = self.db.transaction()?;
        let file_pending = file_pending(&tx, item.file)?;
        match item.state {
            State::Queued => {}
            State::Failed if file_pending => {}
            state => {
                return Err(QueueError::WrongState {
                    id: item.id,
                    state,
                    what: "only a queued item, or a failed one whose file is still in the outbox, can be retried",
                });
            }
        }
        tx.execute(
            "UPDATE items SET state = 'queued', next_attempt_ms = ?2, updated_ms = ?2 WHERE id = ?1",
            params![item.id, now_ms()],
        )?;
        tx.commit()?;
        self.find(&item.id)
    }

    /// `queue cancel`: a queued item is not sent (its file then goes to `failed/` unless
    /// another recipient still waits for it). An item being sent cannot be cancelled.
    pub fn cancel(&mut self, id: &str) -> Result<Item, QueueError> {
        let item = self.find(id)?;
        if item.state != State::Queued {
            return Err(QueueError::WrongState {
                id: item.id,
                state: item.state,
                what: "only a queued item can be cancelled",
            });
        }
        let n = self.db.execute(
            "UPDATE items SET state = 'cancelled', reason = 'cancelled by the operator', updated_ms = ?2
             WHERE id = ?1 AND state = 'queued'",
            params![item.id, now_ms()],
        )?;
        if n == 0 {
            // It was claimed in between.
            return Err(QueueError::WrongState {
                id: item.id,
                state: State::Sending,
                what: "only a queued item can be cancelled",
            });
        }
        self.find(&item.id)
    }

    /// The counts of every state, and the age of the oldest item not final.
    pub fn counts(&self) -> Result<Counts, QueueError> {
        let mut c = Counts::default();
        let mut stmt = self
            .db
            .prepare("SELECT state, COUNT(*) FROM items GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for r in rows {
            let (state, n) = r?;
            let n = n as u64;
            match State::parse(&state)? {
                State::Queued => c.queued = n,
                State::Sending => c.sending = n,
                State::Delivered => c.delivered = n,
                State::Failed => c.failed = n,
                State::Cancelled => c.cancelled = n,
            }
        }
        let oldest: Option<i64> = self.db.query_row(
            "SELECT MIN(created_ms) FROM items WHERE state IN ('queued', 'sending')",
            [],
            |r| r.get(0),
        )?;
        c.oldest_pending_secs = oldest.map(|t| (now_ms().saturating_sub(t).max(0) / 1000) as u64);
        c.received = self
            .db
            .query_row("SELECT COUNT(*) FROM received", [], |r| r.get::<_, i64>(0))?
            as u64;
        Ok(c)
    }

    /// What was received from `sender` (key text) under `item`, if anything.
    pub fn received(&self, sender: &str, item: &str) -> Result<Option<Received>, QueueError> {
        Ok(self
            .db
            .query_row(
                "SELECT blake3, size, inbox, name FROM received WHERE sender = ?1 AND item = ?2",
                params![sender, item],
                |r| {
                    Ok(Received {
                        hash: r.get(0)?,
                        size: r.get::<_, i64>(1)? as u64,
                        inbox: r.get(2)?,
                        name: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records the name the file of `item` from `sender` landed under in its inbox, when
    /// the conflict rule gave it another one than it was offered under.
    pub fn placed(&mut self, sender: &str, item: &str, name: &str) -> Result<(), QueueError> {
        self.db.execute(
            "UPDATE received SET name = ?3 WHERE sender = ?1 AND item = ?2",
            params![sender, item, name],
        )?;
        Ok(())
    }

    /// Remembers that `item` from `sender` was delivered into an inbox (before the file
    /// is given its name there, so a repeat is answered even after a crash in between).
    pub fn remember_received(
        &mut self,
        sender: &str,
        item: &str,
        r: &Received,
    ) -> Result<(), QueueError> {
        self.db.execute(
            "INSERT OR REPLACE INTO received (sender, item, blake3, size, inbox, name, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                sender,
                item,
                r.hash,
                r.size as i64,
                r.inbox,
                r.name,
                now_ms()
            ],
        )?;
        Ok(())
    }
}

/// A peer's last completed transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// When it ended (milliseconds since the epoch).
    pub at_ms: i64,
    /// `sent` or `received`.
    pub direction: String,
    /// `direct` or `relayed`: the path at its end.
    pub path: String,
}

impl Queue {
    /// Remembers that a transfer with `peer_key` (key text) ended now: `direction` is
    /// `sent` or `received`, `path` where its packets went at the end.
    pub fn seen(&mut self, peer_key: &str, direction: &str, path: &str) -> Result<(), QueueError> {
        self.db.execute(
            "INSERT OR REPLACE INTO peers_seen (peer_key, at_ms, direction, path)
             VALUES (?1, ?2, ?3, ?4)",
            params![peer_key, now_ms(), direction, path],
        )?;
        Ok(())
    }

    /// Every peer's last completed transfer, by key text.
    pub fn peers_seen(&self) -> Result<std::collections::HashMap<String, Seen>, QueueError> {
        let mut stmt = self
            .db
            .prepare("SELECT peer_key, at_ms, direction, path FROM peers_seen")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Seen {
                    at_ms: r.get(1)?,
                    direction: r.get(2)?,
                    path: r.get(3)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The query of [`Queue::list_page`] (`?1` items after the first `?2`), along the index
/// `items_by_created`.
fn items_page_sql() -> String {
    format!("{SELECT_ITEM} ORDER BY i.created_ms DESC, i.id DESC LIMIT ?1 OFFSET ?2")
}

/// The query of [`Queue::received_page`], along the index `received_by_time`.
const RECEIVED_PAGE: &str = "SELECT sender, item, blake3, size, inbox, name, at_ms FROM received
     ORDER BY at_ms DESC, item DESC LIMIT ?1 OFFSET ?2";

const SELECT_ITEM: &str =
    "SELECT i.id, i.file, f.outbox, f.name, f.size, f.mtime_ns, i.recipient, i.peer_key,
        i.state, i.attempts, i.next_attempt_ms, i.created_ms, i.receipt, i.reason, i.updated_ms
     FROM items i JOIN files f ON f.id = i.file";

fn item_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    Ok(Item {
        id: r.get(0)?,
        file: r.get(1)?,
        outbox: r.get(2)?,
        name: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        mtime_ns: r.get(5)?,
        recipient: r.get(6)?,
        peer_key: r.get(7)?,
        state: State::parse(&r.get::<_, String>(8)?)?,
        attempts: r.get(9)?,
        next_attempt_ms: r.get(10)?,
        created_ms: r.get(11)?,
        receipt: r.get(12)?,
        reason: r.get(13)?,
        updated_ms: r.get(14)?,
    })
}

fn file_pending(tx: &Transaction<'_>, file: i64) -> Result<bool, QueueError> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM files WHERE id = ?1 AND state = 'pending'",
            params![file],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// A fresh random item id.
fn new_id() -> Result<String, QueueError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| QueueError::Io(std::io::Error::other(e)))?;
    Ok(id_text(&b))
}

/// The wait before attempt `attempts + 1`: 1 s doubled per attempt, at most `max`, then
/// between half and all of it at random (jitter, so that many items do not retry in step).
pub fn backoff(attempts: u32, max: Duration) -> Duration {
    let full = Duration::from_secs(1u64 << attempts.min(20)).min(max);
    let mut r = [0u8; 4];
    let _ = getrandom::getrandom(&mut r);
    let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
    full.mul_f64(0.5 + frac / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn to() -> Vec<(String, String)> {
        vec![
            ("clinic-a".into(), "cpk1a".into()),
            ("clinic-b".into(), "cpk1b".into()),
        ]
    }

    fn file<'a>(name: &'a str, to: &'a [(String, String)]) -> NewFile<'a> {
        NewFile {
            outbox: "/out",
            name,
            size: 10,
            mtime_ns: 7,
            to,
        }
    }

    #[test]
    fn the_database_is_private_wal_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let q = Queue::open(&path).unwrap();
        assert_eq!(q.version().unwrap(), SCHEMA_VERSION);
        let mode: String =
            q.db.pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
        assert_eq!(mode, "wal");
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let m = entry.unwrap().metadata().unwrap();
            assert_eq!(m.permissions().mode() & 0o077, 0);
        }
        drop(q);
        // Opening again applies nothing twice; a newer schema is refused.
        let q = Queue::open(&path).unwrap();
        q.db.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(q);
        assert!(matches!(Queue::open(&path), Err(QueueError::Newer { .. })));
    }

    #[test]
    fn a_version_1_database_gains_the_peers_last_transfers_and_keeps_its_items() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            // A database as conduit with schema 1 left it, with one item.
            let db = Connection::open(&path).unwrap();
            db.execute_batch(MIGRATIONS[0]).unwrap();
            db.pragma_update(None, "user_version", 1).unwrap();
            let mut q = Queue { db };
            q.enqueue(&file("a.csv", &to())).unwrap();
        }
        let mut q = Queue::open(&path).unwrap();
        assert_eq!(q.version().unwrap(), SCHEMA_VERSION);
        assert_eq!(q.list(10).unwrap().len(), 2);
        assert!(q.peers_seen().unwrap().is_empty());
        q.seen("cpk1a", "sent", "relayed").unwrap();
        q.seen("cpk1a", "received", "direct").unwrap();
        let seen = q.peers_seen().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (
                seen["cpk1a"].direction.as_str(),
                seen["cpk1a"].path.as_str()
            ),
            ("received", "direct")
        );
    }

    #[test]
    fn ten_thousand_items_page_in_order_from_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(&dir.path().join(FILE_NAME)).unwrap();
        let one = [("clinic-a".to_string(), "cpk1a".to_string())];
        // (no fsync per item: this test is about order, not durability)
        q.db.pragma_update(None, "synchronous", "OFF").unwrap();
        for i in 0..10_000 {
            q.enqueue(&file(&format!("f{i:05}"), &one)).unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        let mut last = i64::MAX;
        for page in 0..100 {
            let items = q.list_page(page * 100, 100).unwrap();
            assert_eq!(items.len(), 100, "page {page}");
            for i in items {
                assert!(i.created_ms <= last, "newest first");
                last = i.created_ms;
                assert!(seen.insert(i.id));
            }
        }
        assert!(q.list_page(10_000, 100).unwrap().is_empty());
        // Both pages read along an index, without sorting the whole table.
        for sql in [items_page_sql(), RECEIVED_PAGE.to_string()] {
            let mut stmt = q.db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map(params![100, 9900], |r| r.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(
                !plan.iter().any(|p| p.contains("TEMP B-TREE")),
                "{sql}: {plan:?}"
            );
        }
    }

    #[test]
    fn an_item_goes_from_queued_to_delivered_and_the_file_finishes_after_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(&dir.path().join(FILE_NAME)).unwrap();
        let to = to();
        let ids = q.enqueue(&file("a.pdf", &to)).unwrap();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        assert!(parse_id(&ids[0]).is_some());
        let claimed = q.claim_due(10).unwrap();
        assert_eq!(claimed.len(), 2);
        assert!(q.claim_due(10).unwrap().is_empty(), "claimed once");
        q.delivered(&ids[0], "aa").unwrap();
        assert!(q.finished_files().unwrap().is_empty(), "one recipient left");
        q.delivered(&ids[1], "aa").unwrap();
        let done = q.finished_files().unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].failure, None);
        q.file_done(done[0].file).unwrap();
        assert!(q.finished_files().unwrap().is_empty());
        assert!(q.pending_file("/out", "a.pdf").unwrap().is_none());
        assert!(q.known_version("/out", "a.pdf", 10, 7).unwrap());
    }

    #[test]
    fn a_kill_while_sending_leaves_the_item_to_send_again_under_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let to = to();
        let ids = {
            let mut q = Queue::open(&path).unwrap();
            let ids = q.enqueue(&file("a.pdf", &to)).unwrap();
            assert_eq!(q.claim_due(1).unwrap().len(), 1);
            ids
            // dropped without any further step: as after a kill
        };
        let mut q = Queue::open(&path).unwrap();
        assert_eq!(q.recover().unwrap(), 1);
        let again: Vec<String> = q.claim_due(10).unwrap().into_iter().map(|i| i.id).collect();
        let mut want = ids.clone();
        want.sort();
        let mut got = again.clone();
        got.sort();
        assert_eq!(got, want, "the same ids, nothing lost, nothing added");
    }

    #[test]
    fn a_passing_failure_waits_for_the_whole_recipient_and_gives_up_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(&dir.path().join(FILE_NAME)).unwrap();
        let to = vec![("clinic-a".to_string(), "cpk1a".to_string())];
        let a = q.enqueue(&file("a.pdf", &to)).unwrap().remove(0);
        let b = q.enqueue(&file("b.pdf", &to)).unwrap().remove(0);
        let claimed = q.claim_due(1).unwrap();
        assert_eq!(claimed[0].id, a);
        let s = q
            .retry_later(&a, "unreachable", Duration::from_secs(60), 3, true)
            .unwrap();
        assert_eq!(s, State::Queued);
        assert!(q.claim_due(10).unwrap().is_empty(), "b waits too");
        assert_eq!(q.find(&b).unwrap().state, State::Queued);
        q.retry_now(&a[..8]).unwrap();
        let claimed = q.claim_due(10).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempts, 1);
        q.retry_later(&a, "unreachable", Duration::ZERO, 3, false)
            .unwrap();
        q.claim_due(1).unwrap();
        let s = q
            .retry_later(&a, "unreachable", Duration::ZERO, 3, false)
            .unwrap();
        assert_eq!(s, State::Failed);
        let item = q.find(&a).unwrap();
        assert!(item.reason.unwrap().contains("3 attempts"));
        let done = q.finished_files().unwrap();
        assert_eq!(done.len(), 1);
        assert!(done[0].failure.as_deref().unwrap().contains("unreachable"));
    }

    #[test]
    fn cancel_and_retry_apply_to_the_right_states() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(&dir.path().join(FILE_NAME)).unwrap();
        let to = to();
        let ids = q.enqueue(&file("a.pdf", &to)).unwrap();
        q.cancel(&ids[0]).unwrap();
        assert!(matches!(
            q.cancel(&ids[0]),
            Err(QueueError::WrongState { .. })
        ));
        assert!(matches!(
            q.retry_now(&ids[0]),
            Err(QueueError::WrongState { .. })
        ));
        assert!(matches!(q.find("zz"), Err(QueueError::NoItem(_))));
        assert!(matches!(q.find(""), Err(QueueError::NoItem(_))));
        let c = q.counts().unwrap();
        assert_eq!((c.queued, c.cancelled), (1, 1));
        assert!(c.oldest_pending_secs.is_some());
        // A newer version of the same name supersedes the one still pending.
        let newer = NewFile {
            size: 11,
            ..file("a.pdf", &to)
        };
        q.enqueue(&newer).unwrap();
        assert_eq!(q.find(&ids[1]).unwrap().state, State::Cancelled);
        assert_eq!(q.pending_file("/out", "a.pdf").unwrap().unwrap().1, 11);
    }

    #[test]
    fn what_was_received_is_remembered_by_sender_and_item() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let r = Received {
            hash: "ab".into(),
            size: 3,
            inbox: "/in".into(),
            name: "a.pdf".into(),
        };
        Queue::open(&path)
            .unwrap()
            .remember_received("cpk1lab", "00ff", &r)
            .unwrap();
        let q = Queue::open(&path).unwrap();
        assert_eq!(q.received("cpk1lab", "00ff").unwrap(), Some(r));
        assert_eq!(q.received("cpk1other", "00ff").unwrap(), None);
        assert_eq!(q.counts().unwrap().received, 1);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let cap = Duration::from_secs(60);
        for a in 0..10 {
            let d = backoff(a, cap);
            let full = Duration::from_secs(1 << a).min(cap);
            assert!(d >= full / 2 && d <= full, "{a}: {d:?}");
        }
        assert!(backoff(u32::MAX, cap) <= cap);
    }
}
