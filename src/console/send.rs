//! The Send page's folder: files added in the browser wait in `console-outbox/` of the
//! home, an outbox the scanner never scans; the console queues each file itself, for the
//! recipients chosen, in one transaction per file (the queue's [`Queue::enqueue`]), and
//! the agent's dispatcher delivers them like folder files (through the relay), then moves
//! each to `sent/` or `failed/` like any outbox.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::agent::config::{After, Outbox};
use crate::agent::queue::{NewFile, Queue};
use crate::peers::AddressBook;

/// The folder, in the home.
pub const SEND_DIR: &str = "console-outbox";

/// The console's outbox: every peer of the address book may be chosen.
pub fn outbox(home: &Path, book: &AddressBook) -> Outbox {
    Outbox {
        path: home.join(SEND_DIR),
        to: book
            .peers()
            .iter()
            .map(|p| (p.name.clone(), p.key))
            .collect(),
        after: After::Move,
        stable_for: Duration::ZERO,
        include: None,
        exclude: None,
        globs: (Vec::new(), Vec::new()),
        direct: None,
        scanned: false,
    }
}

/// Why a file was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The name cannot be a file name in the folder.
    #[error("{0:?} cannot be sent under this name: {1}")]
    Name(String, String),
    /// A file of this name waits to be sent already.
    #[error("a file named {0:?} is waiting to be sent already")]
    Exists(String),
    /// The disk or the queue failed.
    #[error("{0}")]
    Io(String),
}

/// Checks `name` as a file name of the folder: one path component, valid as a received
/// name would be, not one the agent ignores (`.*`, `*.part`...).
pub fn check_name(name: &str) -> Result<(), SendError> {
    let bad = |why: &str| SendError::Name(name.to_string(), why.to_string());
    let rel = crate::transfer::paths::RelPath::parse(name).map_err(|e| bad(&e.to_string()))?;
    if rel.as_str().contains('/') {
        return Err(bad("it has a folder in it"));
    }
    if crate::agent::config::is_ignored_name(name) {
        return Err(bad(
            "the agent skips such names (hidden or temporary files)",
        ));
    }
    Ok(())
}

/// A file being written into the folder under a temporary name.
pub struct Upload {
    dir: PathBuf,
    tmp: PathBuf,
    file: Option<std::fs::File>,
}

impl Upload {
    /// Starts one in the folder of `home`.
    pub fn start(home: &Path) -> std::io::Result<Self> {
        let dir = home.join(SEND_DIR);
        crate::fsutil::private_dir(&dir)?;
        let mut r = [0u8; 8];
        aws_lc_rs::rand::fill(&mut r).map_err(|_| std::io::Error::other("no random bytes"))?;
        let tmp = dir.join(format!(".upload-{}.part", crate::audit::record::hex(&r)));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0600()
            .open(&tmp)?;
        Ok(Self {
            dir,
            tmp,
            file: Some(file),
        })
    }

    /// Adds bytes.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(bytes),
            None => Err(std::io::Error::other("upload closed")),
        }
    }

    /// Makes it durable and gives it `name` (never over an existing file); returns its
    /// size and mtime as the queue records them.
    pub fn finish(mut self, name: &str) -> Result<(u64, i64), SendError> {
        let io = |e: std::io::Error| SendError::Io(e.to_string());
        let f = self
            .file
            .take()
            .ok_or_else(|| SendError::Io("upload closed".into()))?;
        f.sync_all().map_err(io)?;
        drop(f);
        let target = self.dir.join(name);
        // A hard link fails if the name exists: no file waiting to be sent is replaced.
        match std::fs::hard_link(&self.tmp, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SendError::Exists(name.to_string()));
            }
            Err(e) => return Err(io(e)),
        }
        let _ = std::fs::remove_file(&self.tmp);
        let _ = std::fs::File::open(&self.dir).and_then(|d| d.sync_all());
        let m = std::fs::metadata(&target).map_err(io)?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Ok((m.len(), mtime))
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Not finished (an error, a refused form): nothing stays behind.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// Queues the file `stored` (its name as the queue stores it) of the folder for `to`
/// (names and key texts): one transaction. Returns the item ids.
pub fn queue(
    queue_path: &Path,
    home: &Path,
    stored: &str,
    (size, mtime_ns): (u64, i64),
    to: &[(String, String)],
) -> Result<Vec<String>, SendError> {
    let outbox = home.join(SEND_DIR).to_string_lossy().into_owned();
    let mut q = Queue::open(queue_path).map_err(|e| SendError::Io(e.to_string()))?;
    q.enqueue(&NewFile {
        outbox: &outbox,
        name: stored,
        size,
        mtime_ns,
        to,
    })
    .map_err(|e| SendError::Io(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_sent_are_refused() {
        for bad in [
            "",
            "a/b.pdf",
            "../x",
            ".hidden",
            "x.part",
            "a\u{202e}b",
            "con",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("result 12.pdf").is_ok());
    }

    #[test]
    fn an_upload_never_replaces_a_waiting_file_and_leaves_nothing_when_dropped() {
        let home = tempfile::tempdir().unwrap();
        let mut u = Upload::start(home.path()).unwrap();
        u.write(b"one").unwrap();
        assert_eq!(u.finish("a.txt").unwrap().0, 3);
        let mut u = Upload::start(home.path()).unwrap();
        u.write(b"two").unwrap();
        assert!(matches!(u.finish("a.txt"), Err(SendError::Exists(_))));
        let dir = home.path().join(SEND_DIR);
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"one");
        let u = Upload::start(home.path()).unwrap();
        drop(u);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
