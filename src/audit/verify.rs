//! Checking the chain (`conduit audit verify`) and reading records (`conduit audit show`).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::Serialize;

use crate::audit::AuditError;
use crate::audit::log::{file_name, list};
use crate::audit::record::{self, ChainKey, GENESIS_PREV, MAX_LINE, Record, event};

/// A valid chain.
#[derive(Debug, Clone, Serialize)]
pub struct Valid {
    /// Records in the chain.
    pub records: u64,
    /// Files of the rotation.
    pub files: u64,
    /// The last record's time.
    pub last_ts: Option<String>,
    /// The last record's MAC (hex): keep it elsewhere to detect a later cut of whole
    /// records at the end.
    pub head: Option<String>,
}

/// The first bad record of a broken chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The record's number in the chain (the number it should have had, for a gap).
    pub record: u64,
    /// The file.
    pub file: String,
    /// The line in that file (from 1).
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "record {} ({} line {}): {}",
            self.record, self.file, self.line, self.reason
        )
    }
}

/// Calls `f` with each line of `path` and its number (from 1), one at a time; a last line
/// without a newline, an overlong line or one that is not UTF-8 comes as `Err` with why.
/// Stops at the first `Some` that `f` returns.
fn scan<T>(
    path: &Path,
    mut f: impl FnMut(u64, Result<String, String>) -> Option<T>,
) -> Result<Option<T>, AuditError> {
    let file = std::fs::File::open(path).map_err(AuditError::Io)?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    for number in 1u64.. {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(AuditError::Io)?;
        if n == 0 {
            break;
        }
        let (line, last) = match buf.strip_suffix(b"\n") {
            Some(line) => (
                String::from_utf8(line.to_vec()).map_err(|_| "not UTF-8 text".to_string()),
                false,
            ),
            None if buf.len() > MAX_LINE => (Err("line too long".to_string()), true),
            None => (
                Err("truncated: the file ends in the middle of a record".to_string()),
                true,
            ),
        };
        if let Some(t) = f(number, line) {
            return Ok(Some(t));
        }
        if last {
            break;
        }
    }
    Ok(None)
}

/// A shared lock on the log (held while reading), so no append is seen half-written;
/// `None` when there is no log yet.
fn read_lock(dir: &Path) -> Result<Option<std::fs::File>, AuditError> {
    match std::fs::File::open(dir.join("lock")) {
        Ok(f) => {
            rustix::fs::flock(&f, rustix::fs::FlockOperation::LockShared)
                .map_err(|e| AuditError::Io(e.into()))?;
            Ok(Some(f))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::Io(e)),
    }
}

/// Checks every file of the log in `dir` with `key`: MACs, sequence numbers, the chain
/// of `prev` values across files, and no file missing from the rotation. Returns the
/// first problem.
pub fn verify(dir: &Path, key: &ChainKey) -> Result<Result<Valid, Broken>, AuditError> {
    Ok(verify_reaching(dir, key, None)?.map(|(valid, _)| valid))
}

/// What `conduit audit verify` was told the log holds at least, from an anchor kept
/// outside it (a head printed to the journal, the peer's receipt, a count).
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// A chain head (a record's MAC) the log must contain.
    pub head: Option<[u8; 32]>,
    /// At least this many records.
    pub records: Option<u64>,
}

impl Expect {
    /// Whether anything is expected.
    pub fn is_empty(&self) -> bool {
        self.head.is_none() && self.records.is_none()
    }
}

/// Parses a head given as 64 hex digits.
pub fn parse_head(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let bytes = text.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!(
            "{text:?}: expected a chain head, 64 hex digits (as `audit verify` and the daemon print it)"
        ));
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks(2)) {
        let digits = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
        *o = u8::from_str_radix(digits, 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Checks a valid chain against what was expected of it: `Err` with why when it does not
/// reach `expect.head` (no record of the chain has that MAC) or holds fewer than
/// `expect.records` records, which is what cutting whole records off its end (or
/// putting back an older copy of the log) looks like.
pub fn check_expected(valid: &Valid, head_at: Option<u64>, expect: &Expect) -> Result<(), String> {
    if let Some(want) = expect.records {
        if valid.records < want {
            return Err(format!(
                "the chain holds {} records where at least {want} were expected: records {} to {} are missing from the end",
                valid.records,
                valid.records,
                want - 1
            ));
        }
    }
    if let Some(head) = &expect.head {
        if head_at.is_none() {
            return Err(format!(
                "no record of the chain has the expected head {}: the records up to it were cut off the end (or the head belongs to another log); the chain's head is now {} after {} records",
                record::hex(head),
                valid.head.as_deref().unwrap_or("(none)"),
                valid.records
            ));
        }
    }
    Ok(())
}

/// [`verify`], also finding the record whose MAC is `head` (its number, if any).
pub fn verify_reaching(
    dir: &Path,
    key: &ChainKey,
    head: Option<&[u8; 32]>,
) -> Result<Result<(Valid, Option<u64>), Broken>, AuditError> {
    let mut head_at = None;
    let _lock = read_lock(dir)?;
    let files = list(dir).map_err(AuditError::Io)?;
    let mut expected_seq = 0u64;
    let mut prev = GENESIS_PREV;
    let mut last_ts = None;
    for (expected_file, (number, path)) in (1u64..).zip(&files) {
        let name = file_name(*number);
        if *number != expected_file {
            return Ok(Err(Broken {
                record: expected_seq,
                file: name,
                line: 1,
                reason: format!(
                    "file {} of the rotation is missing (removed?)",
                    file_name(expected_file)
                ),
            }));
        }
        let broken = scan(path, |line_number, line| {
            let at = |reason: String| Broken {
                record: expected_seq,
                file: name.clone(),
                line: line_number,
                reason,
            };
            let line = match line {
                Ok(l) => l,
                Err(why) => return Some(at(why)),
            };
            let p = match record::parse(&line) {
                Ok(p) => p,
                Err(e) => return Some(at(e.to_string())),
            };
            if !key.check(p.body.as_bytes(), &p.mac) {
                return Some(at(
                    "MAC mismatch: the record was altered, or written without this endpoint's key"
                        .into(),
                ));
            }
            let seq = p.record.seq;
            if seq != expected_seq {
                return Some(at(if seq > expected_seq {
                    format!(
                        "found record {seq} where {expected_seq} belongs: records {expected_seq} to {} are missing (deleted, or a file of the rotation removed)",
                        seq - 1
                    )
                } else {
                    format!(
                        "found record {seq} where {expected_seq} belongs: records were reordered or repeated"
                    )
                }));
            }
            if p.prev != prev {
                return Some(at(
                    "its prev does not match the record before: records were reordered or replaced"
                        .into(),
                ));
            }
            if seq == 0 && p.record.event != event::LOG_CREATED {
                return Some(at("the log does not start with its first record".into()));
            }
            prev = p.mac;
            if head == Some(&p.mac) {
                head_at = Some(seq);
            }
            last_ts = Some(p.record.ts);
            expected_seq += 1;
            None
        })?;
        if let Some(b) = broken {
            return Ok(Err(b));
        }
    }
    Ok(Ok((
        Valid {
            records: expected_seq,
            files: files.len() as u64,
            last_ts,
            head: (expected_seq > 0).then(|| record::hex(&prev)),
        },
        head_at,
    )))
}

/// Filters of `conduit audit show`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records at or after this time.
    pub since: Option<time::OffsetDateTime>,
    /// Records whose peer has this name or whose fingerprint starts with this.
    pub peer: Option<String>,
}

impl Filter {
    fn keeps(&self, r: &Record) -> bool {
        if let Some(since) = self.since {
            let ts =
                time::OffsetDateTime::parse(&r.ts, &time::format_description::well_known::Rfc3339);
            if !ts.is_ok_and(|t| t >= since) {
                return false;
            }
        }
        if let Some(peer) = &self.peer {
            let named = r.peer_name.as_deref() == Some(peer.as_str());
            let fp = r.peer.as_deref().is_some_and(|f| {
                !peer.is_empty() && f.replace('-', "").starts_with(&peer.replace('-', ""))
            });
            if !named && !fp {
                return false;
            }
        }
        true
    }
}

/// Parses `--since`: a date (`2026-11-27`, midnight UTC) or an RFC 3339 time.
pub fn parse_since(text: &str) -> Result<time::OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let format =
        time::format_description::parse("[year]-[month]-[day]").map_err(|e| e.to_string())?;
    time::Date::parse(text, &format)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| format!("{text:?}: expected a date (2026-11-27) or an RFC 3339 time"))
}

/// The records of the log that pass `filter`, in order. Lines that are not records are
/// skipped here (`verify` reports them).
pub fn show(dir: &Path, filter: &Filter) -> Result<Vec<Record>, AuditError> {
    let _lock = read_lock(dir)?;
    let mut out = Vec::new();
    for (_, path) in list(dir).map_err(AuditError::Io)? {
        scan(&path, |_, line| {
            if let Some(p) = line.ok().and_then(|l| record::parse(&l).ok()) {
                if filter.keeps(&p.record) {
                    out.push(p.record);
                }
            }
            None::<()>
        })?;
    }
    Ok(out)
}
