//! The audit log on disk: numbered JSON Lines files in `HOME/audit/`, appended under an
//! exclusive file lock (so several processes keep one chain), fsynced before the append
//! returns (the records of one group together: [`AuditLog::append_batch`]), rotated by
//! size with the chain continuing into the next file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::audit::AuditError;
use crate::audit::record::{self, ChainKey, GENESIS_PREV, MAX_LINE, Record};

/// A log file is rotated once it reaches this size (`CONDUIT_AUDIT_ROTATE_BYTES`
/// overrides it).
pub const DEFAULT_ROTATE_BYTES: u64 = 16 << 20;
/// The environment variable that sets the rotation size.
pub const ROTATE_ENV: &str = "CONDUIT_AUDIT_ROTATE_BYTES";

/// The files of one endpoint's audit log.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    key: ChainKey,
    rotate_bytes: u64,
    /// The log's end as this writer left it (see [`Tail`]); `None` until the first append
    /// and after any error.
    tail: Mutex<Option<Tail>>,
    /// Whether this writer has made the directory (private) already.
    dir_ready: AtomicBool,
}

/// The end of the log as this writer's last append left it: the file it wrote (kept open
/// for appending), that file's identity and length right after the record, and the
/// record's sequence number and MAC. Under the lock, the next append chains to this
/// record without listing the directory or reading the tail back, but only when the file
/// under its name is still the same (device, inode) at the same length and no next file
/// of the rotation exists: any other writer's append (another process, another
/// `AuditLog` on the same directory) or a rotation changes one of those, and the append
/// then reads the log's end as before. Each record is still made durable before the
/// append returns.
#[derive(Debug)]
struct Tail {
    number: u64,
    file: File,
    dev: u64,
    ino: u64,
    len: u64,
    seq: u64,
    mac: [u8; 32],
}

/// The name of log file number `n` (from 1).
pub fn file_name(n: u64) -> String {
    format!("audit-{n:06}.jsonl")
}

/// The number of a log file's name, if it is one.
fn file_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if digits.len() < 6 || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log files in `dir`, by number.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(file_number) {
            files.push((n, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

impl AuditLog {
    /// The log in `dir` with chain key `key`, rotated at `rotate_bytes` (the binary gives
    /// [`ROTATE_ENV`] precedence over the configured size), else [`DEFAULT_ROTATE_BYTES`].
    pub fn new(dir: PathBuf, key: ChainKey, rotate_bytes: Option<u64>) -> Self {
        let rotate_bytes = rotate_bytes
            .filter(|&n: &u64| n > 0)
            .unwrap_or(DEFAULT_ROTATE_BYTES);
        Self {
            dir,
            key,
            rotate_bytes,
            tail: Mutex::new(None),
            dir_ready: AtomicBool::new(false),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chain key.
    pub fn key(&self) -> &ChainKey {
        &self.key
    }

    /// Appends `record` (its `seq` and `prev` are set here) after the last record of the
    /// log, creating the log with its first record if there is none; fsyncs it. Returns
    /// the sequence number written.
    pub fn append(&self, record: Record) -> Result<u64, AuditError> {
        self.append_with_head(record).map(|(seq, _)| seq)
    }

    /// [`AuditLog::append`], returning the sequence number and the record's MAC: the
    /// chain's head right after it.
    pub fn append_with_head(&self, record: Record) -> Result<(u64, [u8; 32]), AuditError> {
        let lock = self.lock()?;
        let written = self.append_locked(record)?;
        drop(lock);
        Ok(written)
    }

    /// The chain's head: the MAC of the last record (checked), `None` for an empty log.
    pub fn head_mac(&self) -> Result<Option<[u8; 32]>, AuditError> {
        let _lock = self.lock()?;
        let files = list(&self.dir).map_err(AuditError::Io)?;
        Ok(self.last(&files)?.map(|(_, last)| last.mac))
    }

    /// The last record's sequence number and MAC (hex), the chain's head: `None` for an
    /// empty log. Only the last record is read (and its MAC checked), so this is cheap
    /// on a log of any size; `conduit audit verify --expect-head` checks it later.
    pub fn head(&self) -> Result<Option<(u64, String)>, AuditError> {
        let _lock = self.lock()?;
        let files = list(&self.dir).map_err(AuditError::Io)?;
        Ok(self
            .last(&files)?
            .map(|(_, p)| (p.record.seq, record::hex(&p.mac))))
    }

    /// The exclusive lock on the log (creating the directory if needed).
    fn lock(&self) -> Result<File, AuditError> {
        // The directory is made (and made private) on this writer's first lock, and again
        // should it have gone since.
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(self.dir.join("lock"))
        };
        let lock = match self.dir_ready.load(Ordering::Relaxed) {
            true => open(),
            false => Err(io::ErrorKind::NotFound.into()),
        };
        let lock = match lock {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                crate::fsutil::private_dir(&self.dir).map_err(AuditError::Io)?;
                let lock = open().map_err(AuditError::Io)?;
                self.dir_ready.store(true, Ordering::Relaxed);
                lock
            }
            r => r.map_err(AuditError::Io)?,
        };
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| AuditError::Io(e.into()))?;
        Ok(lock)
    }

    /// Cuts a torn record (a last line without its newline, left by a crash or a full
    /// disk) off the end of the log and records the repair: `None` when there is nothing
    /// to cut. Refuses when what lacks a newline is longer than any record could be, or
    /// when the record before it does not verify (that is tampering, not a torn write).
    pub fn repair(&self, local: &str) -> Result<Option<(String, u64)>, AuditError> {
        let _lock = self.lock()?;
        *self.tail() = None;
        let files = list(&self.dir).map_err(AuditError::Io)?;
        let Some((_, path)) = files
            .iter()
            .rev()
            .find(|(_, p)| fs::metadata(p).is_ok_and(|m| m.len() > 0))
        else {
            return Ok(None);
        };
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(AuditError::Io)?;
        let len = f.metadata().map_err(AuditError::Io)?.len();
        let from = len.saturating_sub(MAX_LINE as u64 + 1);
        f.seek(SeekFrom::Start(from)).map_err(AuditError::Io)?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).map_err(AuditError::Io)?;
        if tail.ends_with(b"\n") {
            return Ok(None);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let keep = match tail.iter().rposition(|&b| b == b'\n') {
            Some(i) => from + i as u64 + 1,
            None if from == 0 => 0,
            None => {
                return Err(AuditError::Damaged {
                    file: path.display().to_string(),
                    why: "it ends in more than 64 KiB without a newline: not a torn record".into(),
                });
            }
        };
        let cut = len - keep;
        f.set_len(keep).map_err(AuditError::Io)?;
        f.sync_all().map_err(AuditError::Io)?;
        let reason = format!("cut {cut} bytes of a partial record at the end of {name}");
        let recorded = self.append_locked(Record {
            v: record::SCHEMA_VERSION,
            event: record::event::LOG_REPAIRED.into(),
            ts: record::now(),
            local: local.to_string(),
            reason: Some(reason),
            ..Record::default()
        });
        if let Err(e) = recorded {
            // The record before does not verify (or the disk is full): put the bytes
            // back as they were and leave the log to `audit verify` and a person.
            let cut_bytes = &tail[usize::try_from(keep - from).unwrap_or(tail.len())..];
            std::os::unix::fs::FileExt::write_all_at(&f, cut_bytes, keep)
                .and_then(|()| f.sync_all())
                .map_err(AuditError::Io)?;
            return Err(e);
        }
        Ok(Some((name, cut)))
    }

    /// This writer's knowledge of the log's end.
    fn tail(&self) -> MutexGuard<'_, Option<Tail>> {
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`AuditLog::append`] with the lock held.
    fn append_locked(&self, record: Record) -> Result<(u64, [u8; 32]), AuditError> {
        let (mut written, failed) = self.append_batch_locked(vec![record]);
        match (failed, written.pop()) {
            (None, Some(head)) => Ok(head),
            (Some(e), _) => Err(e),
            (None, None) => Err(AuditError::Io(io::Error::other("no record was written"))),
        }
    }

    /// Appends `records`, in order, as one group: under one lock, one write and one
    /// `fdatasync` per log file the group lands in (a group that reaches the rotation
    /// size continues in the next file, exactly where appending the records one at a time
    /// would have put them). The records, their chain and the files are the same as
    /// [`AuditLog::append`] called once per record; only the writes and syncs are shared.
    ///
    /// Returns the sequence number and MAC of every record made durable, in order, and
    /// the error that stopped the rest (those after the durable ones were not written,
    /// or cut off again).
    pub fn append_batch(&self, records: Vec<Record>) -> (Vec<(u64, [u8; 32])>, Option<AuditError>) {
        let lock = match self.lock() {
            Ok(l) => l,
            Err(e) => return (Vec::new(), Some(e)),
        };
        let written = self.append_batch_locked(records);
        drop(lock);
        written
    }

    /// [`AuditLog::append_batch`] with the lock held.
    fn append_batch_locked(
        &self,
        records: Vec<Record>,
    ) -> (Vec<(u64, [u8; 32])>, Option<AuditError>) {
        let mut tail = self.tail();
        // Whatever happens below, a failed append leaves nothing to trust.
        let known = tail.take();
        let mut durable = Vec::with_capacity(records.len());
        let Some(local) = records.first().map(|r| r.local.clone()) else {
            return (durable, None);
        };
        let (mut end, mut created) = match known.filter(|t| self.still_last(t)) {
            Some(t) => (t, false),
            None => match self.find_end(&local) {
                Ok(x) => x,
                Err(e) => return (durable, Some(e)),
            },
        };
        // The lines not yet written to `end`'s file, and their heads.
        let mut lines = String::new();
        let mut pending = Vec::new();
        let mut seq = end.seq;
        let mut mac = end.mac;
        for mut record in records {
            if end.len + lines.len() as u64 >= self.rotate_bytes {
                let flushed = self.flush(&mut end, &lines, seq, mac, created);
                if let Err(e) = flushed {
                    return (durable, Some(e));
                }
                durable.append(&mut pending);
                lines.clear();
                match self.open_file(end.number + 1, seq, mac) {
                    Ok(next) => (end, created) = next,
                    Err(e) => return (durable, Some(e)),
                }
            }
            record.seq = seq + 1;
            record.prev = record::hex(&mac);
            let line = match encode_line(&record, &self.key) {
                Ok(x) => x,
                Err(e) => {
                    // Records before this one in the group are still written.
                    let flushed = self.flush(&mut end, &lines, seq, mac, created);
                    if flushed.is_ok() {
                        durable.append(&mut pending);
                        *tail = Some(end);
                    }
                    return (durable, Some(flushed.err().unwrap_or(e)));
                }
            };
            (seq, mac) = (record.seq, line.1);
            lines.push_str(&line.0);
            pending.push((seq, mac));
        }
        if let Err(e) = self.flush(&mut end, &lines, seq, mac, created) {
            return (durable, Some(e));
        }
        durable.append(&mut pending);
        *tail = Some(end);
        (durable, None)
    }

    /// The log's end when this writer does not know it (the lock held): the last file
    /// (its last record checked), or a new log with its first record (`local` is the
    /// endpoint's fingerprint). Also returns whether the file was created, so that its
    /// directory is synced once the first lines are in it.
    fn find_end(&self, local: &str) -> Result<(Tail, bool), AuditError> {
        let files = list(&self.dir).map_err(AuditError::Io)?;
        match self.last(&files)? {
            None => {
                let first = Record {
                    v: record::SCHEMA_VERSION,
                    seq: 0,
                    ts: record::now(),
                    event: record::event::LOG_CREATED.into(),
                    local: local.to_string(),
                    prev: record::hex(&GENESIS_PREV),
                    ..Record::default()
                };
                let number = files.last().map_or(1, |(n, _)| *n);
                Ok((self.write(number, &first)?, false))
            }
            Some((number, last)) => self.open_file(number, last.record.seq, last.mac),
        }
    }

    /// Opens log file `number` for appending (created if absent) after the record
    /// `seq` with `mac`; returns whether it was created.
    fn open_file(&self, number: u64, seq: u64, mac: [u8; 32]) -> Result<(Tail, bool), AuditError> {
        let path = self.dir.join(file_name(number));
        let created = !path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(AuditError::Io)?;
        let meta = file.metadata().map_err(AuditError::Io)?;
        Ok((
            Tail {
                number,
                dev: meta.dev(),
                ino: meta.ino(),
                len: meta.len(),
                file,
                seq,
                mac,
            },
            created,
        ))
    }

    /// Writes `lines` at the end of `end`'s file in one write and makes them durable
    /// (`fdatasync`; the directory too when the file was `created`); `end` then stands
    /// for the record `seq` with `mac`. On an error the file is cut back to where it was:
    /// no half record is left (a full disk).
    fn flush(
        &self,
        end: &mut Tail,
        lines: &str,
        seq: u64,
        mac: [u8; 32],
        created: bool,
    ) -> Result<(), AuditError> {
        if lines.is_empty() {
            return Ok(());
        }
        let len = end.len;
        if let Err(e) = end
            .file
            .write_all(lines.as_bytes())
            .and_then(|()| end.file.sync_data())
        {
            let _ = end.file.set_len(len);
            let _ = end.file.sync_data();
            return Err(AuditError::Io(e));
        }
        if created {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(AuditError::Io)?;
        }
        end.len = len + lines.len() as u64;
        (end.seq, end.mac) = (seq, mac);
        Ok(())
    }

    /// Whether `tail` is still the end of the log (the lock held): its file is under its
    /// name with the same identity and length, is not due for rotation, and no next file
    /// exists.
    fn still_last(&self, tail: &Tail) -> bool {
        let same = fs::symlink_metadata(self.dir.join(file_name(tail.number))).is_ok_and(|m| {
            m.is_file() && m.dev() == tail.dev && m.ino() == tail.ino && m.len() == tail.len
        });
        same && tail.len < self.rotate_bytes
            && matches!(
                fs::symlink_metadata(self.dir.join(file_name(tail.number + 1))),
                Err(e) if e.kind() == io::ErrorKind::NotFound
            )
    }

    /// Writes one record at the end of file `number` (created if absent) and makes it
    /// durable.
    fn write(&self, number: u64, record: &Record) -> Result<Tail, AuditError> {
        let path = self.dir.join(file_name(number));
        let created = !path.exists();
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(AuditError::Io)?;
        let written = self.write_to(number, f, record)?;
        if created {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(AuditError::Io)?;
        }
        Ok(written)
    }

    /// Writes one record at the end of `f`, file `number` opened for appending, and makes
    /// it durable (`fdatasync`: the data and the file's new length, which is all a reader
    /// needs; the file's times are not part of the chain).
    fn write_to(&self, number: u64, mut f: File, record: &Record) -> Result<Tail, AuditError> {
        let (line, mac) = encode_line(record, &self.key)?;
        let meta = f.metadata().map_err(AuditError::Io)?;
        let len = meta.len();
        if let Err(e) = f.write_all(line.as_bytes()).and_then(|()| f.sync_data()) {
            // Do not leave half a record (a full disk): cut back to where it was.
            let _ = f.set_len(len);
            let _ = f.sync_data();
            return Err(AuditError::Io(e));
        }
        Ok(Tail {
            number,
            file: f,
            dev: meta.dev(),
            ino: meta.ino(),
            len: len + line.len() as u64,
            seq: record.seq,
            mac,
        })
    }

    /// The last record of the log and the number of its file; checks its MAC, so a
    /// damaged or forged end of the log stops new records from being chained to it.
    fn last(&self, files: &[(u64, PathBuf)]) -> Result<Option<(u64, record::Parsed)>, AuditError> {
        for (number, path) in files.iter().rev() {
            let Some(line) = last_line(path).map_err(AuditError::Io)? else {
                continue;
            };
            let damaged = |why: String| AuditError::Damaged {
                file: path.display().to_string(),
                why,
            };
            let line = line.map_err(|()| damaged("it ends in a partial record".into()))?;
            let parsed = record::parse(&line).map_err(|e| damaged(e.to_string()))?;
            if !self.key.check(parsed.body.as_bytes(), &parsed.mac) {
                return Err(damaged(format!(
                    "its last record ({}) does not verify",
                    parsed.record.seq
                )));
            }
            return Ok(Some((*number, parsed)));
        }
        Ok(None)
    }
}

/// `record` as one line of the log (with its newline), and its MAC; a record too long
/// for a line is an error.
fn encode_line(record: &Record, key: &ChainKey) -> Result<(String, [u8; 32]), AuditError> {
    let (mut line, mac) =
        record::encode(record, key).map_err(|e| AuditError::Io(io::Error::other(e)))?;
    if line.len() >= MAX_LINE {
        return Err(AuditError::Io(io::Error::other(format!(
            "a record of {} bytes exceeds the {MAX_LINE}-byte line limit",
            line.len()
        ))));
    }
    line.push('\n');
    Ok((line, mac))
}

/// The last line of `path`: `None` for an empty file, `Err(())` inside when the file does
/// not end with a newline (a torn write) or the line is too long.
#[allow(clippy::type_complexity)]
fn last_line(path: &Path) -> io::Result<Option<Result<String, ()>>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    // Room for the longest line, its newline and the newline before it.
    let from = len.saturating_sub(MAX_LINE as u64 + 2);
    f.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity((len - from) as usize);
    f.read_to_end(&mut tail)?;
    let Some(body) = tail.strip_suffix(b"\n") else {
        return Ok(Some(Err(())));
    };
    let start = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if from == 0 => 0,
        None => return Ok(Some(Err(()))),
    };
    Ok(Some(
        String::from_utf8(body[start..].to_vec()).map_err(|_| ()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify;

    fn record(n: u64) -> Record {
        Record {
            v: record::SCHEMA_VERSION,
            ts: record::now(),
            event: record::event::FILE_COMPLETED.into(),
            local: "abcd".into(),
            path: Some(format!("file-{n}")),
            size: Some(n),
            ..Record::default()
        }
    }

    /// Two writers on one directory (each with its own cached end of the log, as two
    /// processes have) appending in turn, across rotations: one chain without a fork.
    #[test]
    fn two_writers_appending_in_turn_keep_one_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let key = || ChainKey::derive(&[7u8; 32], b"test");
        let (a, b) = (
            AuditLog::new(dir.clone(), key(), Some(1500)),
            AuditLog::new(dir.clone(), key(), Some(1500)),
        );
        let mut seqs = Vec::new();
        // Runs of one writer (where its cache is used) and single alternations.
        let turns = [0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1];
        for (i, who) in turns.iter().enumerate() {
            let log = if *who == 0 { &a } else { &b };
            seqs.push(log.append(record(i as u64)).unwrap());
        }
        // Seq 0 is the log's creation.
        assert_eq!(seqs, (1..=turns.len() as u64).collect::<Vec<_>>());
        let files = list(&dir).unwrap();
        assert!(files.len() > 2, "rotated: {files:?}");
        let valid = verify::verify(&dir, &key()).unwrap().unwrap();
        assert_eq!(valid.records, turns.len() as u64 + 1);
    }

    /// The cached end is used while this writer is the only one, and not once another
    /// writer has appended.
    #[test]
    fn the_cached_end_is_dropped_when_another_writer_appends() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let key = || ChainKey::derive(&[7u8; 32], b"test");
        let (a, b) = (
            AuditLog::new(dir.clone(), key(), None),
            AuditLog::new(dir.clone(), key(), None),
        );
        a.append(record(1)).unwrap();
        a.append(record(2)).unwrap();
        assert!(a.tail().as_ref().is_some_and(|t| a.still_last(t)));
        b.append(record(3)).unwrap();
        assert!(!a.tail().as_ref().is_some_and(|t| a.still_last(t)));
        assert_eq!(a.append(record(4)).unwrap(), 4);
        assert_eq!(verify::verify(&dir, &key()).unwrap().unwrap().records, 5);
    }

    /// A group that crosses the rotation size continues in the next file where appending
    /// its records one at a time would have: the same files with the same records, one
    /// chain.
    #[test]
    fn a_group_is_split_across_rotation_as_single_appends_are() {
        let tmp = tempfile::tempdir().unwrap();
        let key = || ChainKey::derive(&[7u8; 32], b"test");
        let (one, batch) = (tmp.path().join("one"), tmp.path().join("batch"));
        let (a, b) = (
            AuditLog::new(one.clone(), key(), Some(1500)),
            AuditLog::new(batch.clone(), key(), Some(1500)),
        );
        a.append(record(0)).unwrap();
        b.append(record(0)).unwrap();
        for n in 1..=20 {
            a.append(record(n)).unwrap();
        }
        let (heads, failed) = b.append_batch((1..=20).map(record).collect());
        assert!(failed.is_none());
        assert_eq!(
            heads.iter().map(|h| h.0).collect::<Vec<_>>(),
            (2..=21).collect::<Vec<_>>()
        );
        let shape = |dir: &Path| -> Vec<(u64, Vec<u64>)> {
            list(dir)
                .unwrap()
                .into_iter()
                .map(|(n, p)| {
                    let seqs = fs::read_to_string(p)
                        .unwrap()
                        .lines()
                        .map(|l| record::parse(l).unwrap().record.seq)
                        .collect();
                    (n, seqs)
                })
                .collect()
        };
        assert!(shape(&one).len() > 2, "rotated: {:?}", shape(&one));
        assert_eq!(shape(&one), shape(&batch));
        // The last head is the chain's head, and the next append continues the chain.
        assert_eq!(b.head_mac().unwrap(), heads.last().map(|h| h.1));
        assert_eq!(b.append(record(21)).unwrap(), 22);
        for dir in [&one, &batch] {
            assert!(verify::verify(dir, &key()).unwrap().is_ok());
        }
    }
}
