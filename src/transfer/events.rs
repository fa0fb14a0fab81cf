//! What a transfer reports while it runs ([`Event`], to an [`Events`] sink) and when it
//! ends ([`Summary`]).

use std::sync::Arc;
use std::time::Instant;

use crate::audit::names::Names;
use crate::crypto::identity::PublicKey;
use crate::transfer::data;
use crate::transfer::paths::RelPath;

/// Top-level names an [`Event::Offer`] lists (it counts them all).
pub const TOP_LEVEL_SHOWN: usize = 100;

/// Shortest interval between two progress events (at most 4 per second).
pub const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// What a finished transfer reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The peer.
    pub peer: PublicKey,
    /// Files and their hashes (BLAKE3, or SHA-256 in the FIPS session).
    pub files: Vec<(RelPath, u64, crate::crypto::file_hash::FileHash)>,
    /// Plaintext bytes of the files (including resumed ones).
    pub bytes: u64,
    /// Bytes not sent again because the receiver held them from an interrupted transfer.
    pub resumed: u64,
    /// Wall time from the first offer byte to the receipt.
    pub seconds: f64,
    /// The STREAM cipher suite the handshake agreed on.
    pub suite: crate::crypto::suite::Suite,
    /// The path the connection took.
    pub path: crate::transport::path::PathKind,
}

/// What a transfer reports while it runs.
#[derive(Debug, Clone)]
pub enum Event {
    /// The receiver got a valid offer (sent before it is accepted or refused).
    Offer {
        /// The sender.
        peer: PublicKey,
        /// Number of files.
        files: u64,
        /// Number of empty directories.
        dirs: u64,
        /// Sum of the files' sizes.
        total: u64,
        /// The first [`TOP_LEVEL_SHOWN`] distinct top-level names, sorted and escaped.
        top_level: Vec<String>,
        /// How many distinct top-level names the offer has.
        top_level_count: u64,
    },
    /// Plaintext bytes moved so far, of `total`.
    Progress {
        /// Bytes so far.
        bytes: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Something the user should know that does not stop the transfer (a partial file
    /// in the destination that is not adopted for a resume, and why).
    Warning {
        /// The file it is about (escaped), if any: shown apart from the message, so that
        /// an output in names mode hash can show it hashed.
        path: Option<String>,
        /// What happened, without the file's name.
        message: String,
    },
    /// One file is complete and verified.
    FileDone {
        /// Its path (escaped).
        path: String,
        /// Its size.
        size: u64,
        /// Its hash (BLAKE3, or SHA-256 in the FIPS session).
        hash: crate::crypto::file_hash::FileHash,
    },
    /// The connection's packets changed path (through the relay's switch, under the
    /// same connection): they go direct, or through the relay again.
    Path {
        /// Where they go now.
        path: crate::transport::path::PathKind,
        /// The peer's direct address, or the relay's.
        via: std::net::SocketAddr,
        /// When.
        at: std::time::SystemTime,
    },
}

/// Follows a connection's path and emits [`Event::Path`] on every change, until dropped.
pub(crate) struct PathFollower(tokio::task::JoinHandle<()>);

impl Drop for PathFollower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Receives the [`Event`]s of a transfer, with how that transfer shows file names
/// ([`Names`]: as they are, or hashed in names mode hash); called from any thread.
pub type Events = Arc<dyn Fn(&Names, Event) + Send + Sync>;

/// An [`Events`] sink that drops every event.
pub fn quiet() -> Events {
    Arc::new(|_, _| {})
}

/// The events of one transfer: the sink and that transfer's names.
#[derive(Clone)]
pub(crate) struct Emit {
    pub(crate) sink: Events,
    pub(crate) names: Names,
}

impl Emit {
    pub(crate) fn emit(&self, e: Event) {
        (self.sink)(&self.names, e);
    }

    /// Emits [`Event::Path`] whenever `conn`'s path changes (a connection through the
    /// relay's switch that finds, or loses, a direct path), until the guard is dropped;
    /// `None` for a path that cannot change. Also tells the path that the session on
    /// `conn` is authenticated ([`crate::transport::path::session_up`]): call it once
    /// the handshake is done.
    pub(crate) fn follow_path(&self, conn: &quinn::Connection) -> Option<PathFollower> {
        // Following first: the path may change a moment after it is told.
        let changes = crate::transport::path::follow(conn);
        crate::transport::path::session_up(conn);
        let mut changes = changes?;
        let emit = self.clone();
        Some(PathFollower(tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let now = *changes.borrow_and_update();
                emit.emit(Event::Path {
                    path: now.kind,
                    via: now.via,
                    at: std::time::SystemTime::now(),
                });
            }
        })))
    }

    /// Turns per-chunk byte counts into [`Event::Progress`] events, at most every
    /// [`PROGRESS_INTERVAL`].
    pub(crate) fn progress(
        &self,
        total: u64,
        done: &Arc<std::sync::atomic::AtomicU64>,
    ) -> data::Progress {
        let emit = self.clone();
        let done = Arc::clone(done);
        let last = Arc::new(std::sync::Mutex::new(Instant::now()));
        Arc::new(move |n| {
            let bytes = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
            let mut at = last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if at.elapsed() >= PROGRESS_INTERVAL || bytes == total {
                *at = Instant::now();
                emit.emit(Event::Progress { bytes, total });
            }
        })
    }
}
