//! The offer's manifest, checked without IO: the announced counts against the receiver's
//! [`Policy`], every path parsed ([`RelPath`]), the paths' total size bounded while they
//! arrive, no two entries colliding, the sizes adding up to the announced total.
//!
//! [`Offer::validate`] checks a whole offer at once (unit-tested and fuzzed, see
//! `fuzz/fuzz_targets/offer.rs`); the receiver feeds the same checks batch by batch
//! through a [`ManifestReader`], so that a peer's offer is bounded before it is held.

use thiserror::Error;

use crate::transfer::paths::{PathError, RelPath, check_collisions};
use crate::transfer::protocol::{
    DEFAULT_MAX_ENTRIES, Entry, MAX_ENTRIES, OfferDirs, OfferEntries, OfferStart, Refusal,
    RefusalCode,
};

/// Most bytes of paths one offer may hold (with at most [`MAX_ENTRIES`] entries, this
/// bounds the receiver's memory for the manifest).
pub const MAX_MANIFEST_PATH_BYTES: usize = 64 << 20;

/// What a receiver accepts in one offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Most entries (files and empty directories); larger offers are refused before
    /// their manifest is read. Clamped to 1..=[`MAX_ENTRIES`].
    pub max_entries: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

impl Policy {
    /// The entry limit in force.
    pub fn max_entries(&self) -> u64 {
        self.max_entries.clamp(1, MAX_ENTRIES)
    }
}

/// Why an offer is not valid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OfferError {
    /// The receiver's policy refuses the offer before its manifest is read (too many
    /// entries); the sender is told so.
    #[error("offer refused: {}", .0.explain())]
    Refused(Refusal),
    /// No entry at all, or more than the protocol allows.
    #[error("offer of {files} files and {dirs} directories (1 to {MAX_ENTRIES} entries allowed)")]
    EntryCount {
        /// Files announced.
        files: u64,
        /// Empty directories announced.
        dirs: u64,
    },
    /// A batch of entries is empty, or goes past the announced count.
    #[error("offer entries do not match the announced count")]
    EntriesMismatch,
    /// A batch of directories is empty, or goes past the announced count.
    #[error("offer directories do not match the announced count")]
    DirsMismatch,
    /// The manifest ended before the announced entries.
    #[error("the offer ended before its announced entries")]
    Incomplete,
    /// The paths together are longer than [`MAX_MANIFEST_PATH_BYTES`].
    #[error("the offer's paths exceed {MAX_MANIFEST_PATH_BYTES} bytes")]
    PathBytes,
    /// A path is not one the receiver accepts, or two collide.
    #[error("{0}")]
    Path(#[from] PathError),
    /// The files' sizes do not add up to the announced total.
    #[error("offered sizes do not add up to the announced total")]
    SizeMismatch,
}

/// A whole offer as it came off the wire: its start, and the batches of entries and of
/// empty directories in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Offer {
    /// The start (counts, total size, keys' inputs).
    pub start: OfferStart,
    /// The files' entries, batch by batch.
    pub entries: Vec<OfferEntries>,
    /// The empty directories, batch by batch.
    pub dirs: Vec<OfferDirs>,
}

impl Offer {
    /// Checks the whole offer against `policy`; a pure function.
    pub fn validate(self, policy: &Policy) -> Result<ValidOffer, OfferError> {
        let mut reader = ManifestReader::new(self.start, policy)?;
        let mut entries = self.entries.into_iter();
        let mut dirs = self.dirs.into_iter();
        loop {
            match reader.next() {
                Next::Entries => reader.entries(entries.next().ok_or(OfferError::Incomplete)?)?,
                Next::Dirs => reader.dirs(dirs.next().ok_or(OfferError::Incomplete)?)?,
                Next::Done => break,
            }
        }
        if entries.next().is_some() {
            return Err(OfferError::EntriesMismatch);
        }
        if dirs.next().is_some() {
            return Err(OfferError::DirsMismatch);
        }
        reader.finish()
    }
}

/// What a [`ManifestReader`] needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A batch of file entries.
    Entries,
    /// A batch of empty directories.
    Dirs,
    /// Nothing: [`ManifestReader::finish`].
    Done,
}

/// Reads an offer's manifest batch by batch, checking each as it comes.
#[derive(Debug)]
pub struct ManifestReader {
    start: OfferStart,
    entries: Vec<(RelPath, Entry)>,
    dirs: Vec<RelPath>,
    path_bytes: usize,
}

impl ManifestReader {
    /// Checks the start: the announced counts within the protocol's bound (else a
    /// protocol error) and within `policy` (else a refusal the sender is told).
    pub fn new(start: OfferStart, policy: &Policy) -> Result<Self, OfferError> {
        let announced = start
            .count
            .checked_add(start.dirs)
            .filter(|&n| n > 0 && n <= MAX_ENTRIES)
            .ok_or(OfferError::EntryCount {
                files: start.count,
                dirs: start.dirs,
            })?;
        let max = policy.max_entries();
        if announced > max {
            return Err(OfferError::Refused(Refusal::new(
                RefusalCode::TooManyEntries { max },
                format!("{announced} entries offered"),
            )));
        }
        Ok(ManifestReader {
            entries: Vec::with_capacity(start.count.min(4096) as usize),
            dirs: Vec::with_capacity(start.dirs.min(4096) as usize),
            start,
            path_bytes: 0,
        })
    }

    /// The offer's start.
    pub fn start(&self) -> &OfferStart {
        &self.start
    }

    /// What comes next.
    pub fn next(&self) -> Next {
        if (self.entries.len() as u64) < self.start.count {
            Next::Entries
        } else if (self.dirs.len() as u64) < self.start.dirs {
            Next::Dirs
        } else {
            Next::Done
        }
    }

    fn count_path(&mut self, p: &str) -> Result<(), OfferError> {
        self.path_bytes = self.path_bytes.saturating_add(p.len());
        if self.path_bytes > MAX_MANIFEST_PATH_BYTES {
            Err(OfferError::PathBytes)
        } else {
            Ok(())
        }
    }

    /// Takes a batch of file entries.
    pub fn entries(&mut self, OfferEntries(batch): OfferEntries) -> Result<(), OfferError> {
        if batch.is_empty() || self.entries.len() as u64 + batch.len() as u64 > self.start.count {
            return Err(OfferError::EntriesMismatch);
        }
        for e in batch {
            self.count_path(&e.path)?;
            let rel = RelPath::parse(&e.path)?;
            // The path is kept once, as the validated RelPath.
            self.entries.push((
                rel,
                Entry {
                    path: String::new(),
                    ..e
                },
            ));
        }
        Ok(())
    }

    /// Takes a batch of empty directories.
    pub fn dirs(&mut self, OfferDirs(batch): OfferDirs) -> Result<(), OfferError> {
        if batch.is_empty() || self.dirs.len() as u64 + batch.len() as u64 > self.start.dirs {
            return Err(OfferError::DirsMismatch);
        }
        for d in batch {
            self.count_path(&d)?;
            self.dirs.push(RelPath::parse(&d)?);
        }
        Ok(())
    }

    /// Every path read so far (files, then directories).
    pub fn paths(&self) -> impl Iterator<Item = &RelPath> {
        self.entries.iter().map(|(r, _)| r).chain(self.dirs.iter())
    }

    /// The last checks, once everything is read: no collisions, sizes add up.
    pub fn finish(self) -> Result<ValidOffer, OfferError> {
        if self.next() != Next::Done {
            return Err(OfferError::Incomplete);
        }
        check_collisions(self.paths())?;
        let sum = self
            .entries
            .iter()
            .try_fold(0u64, |acc, (_, e)| acc.checked_add(e.size));
        if sum != Some(self.start.total_size) {
            return Err(OfferError::SizeMismatch);
        }
        Ok(ValidOffer {
            start: self.start,
            entries: self.entries,
            dirs: self.dirs,
        })
    }
}

/// An offer that passed every check.
#[derive(Debug, Clone)]
pub struct ValidOffer {
    /// The start.
    pub start: OfferStart,
    /// The files: validated path, and the entry (its `path` field emptied).
    pub entries: Vec<(RelPath, Entry)>,
    /// The empty directories.
    pub dirs: Vec<RelPath>,
}

impl ValidOffer {
    /// The distinct top-level names (sorted, at most `shown`, escaped) and how many there
    /// are.
    pub fn top_level(&self, shown: usize) -> (Vec<String>, u64) {
        let distinct: std::collections::BTreeSet<&str> = self
            .entries
            .iter()
            .map(|(r, _)| r)
            .chain(self.dirs.iter())
            .filter_map(|r| r.components().next())
            .collect();
        let names = distinct
            .iter()
            .take(shown)
            .map(|n| crate::transfer::paths::escape(n))
            .collect();
        (names, distinct.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(count: u64, dirs: u64, total: u64) -> OfferStart {
        OfferStart {
            transfer_id: [1; 16],
            session_secret: [2; 32],
            chunk_size: 1 << 20,
            count,
            dirs,
            total_size: total,
            audit_head: None,
        }
    }

    fn entry(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            size,
            mode: 0o644,
            mtime: 0,
        }
    }

    fn offer(entries: Vec<Vec<Entry>>, dirs: Vec<Vec<&str>>, total: u64) -> Offer {
        let count = entries.iter().map(Vec::len).sum::<usize>() as u64;
        let ndirs = dirs.iter().map(Vec::len).sum::<usize>() as u64;
        Offer {
            start: start(count, ndirs, total),
            entries: entries.into_iter().map(OfferEntries).collect(),
            dirs: dirs
                .into_iter()
                .map(|b| OfferDirs(b.into_iter().map(String::from).collect()))
                .collect(),
        }
    }

    #[test]
    fn a_good_offer_is_valid() {
        let o = offer(
            vec![vec![entry("a/x", 3)], vec![entry("b", 4)]],
            vec![vec!["c/empty"]],
            7,
        );
        let v = o.validate(&Policy::default()).unwrap();
        assert_eq!(v.entries.len(), 2);
        assert_eq!(v.dirs.len(), 1);
        assert_eq!(v.entries[0].0.as_str(), "a/x");
        assert_eq!(v.top_level(2), (vec!["a".to_string(), "b".to_string()], 3));
    }

    #[test]
    fn too_many_entries_are_refused_with_the_limit() {
        let o = offer(vec![vec![entry("a", 1), entry("b", 1)]], vec![], 2);
        let err = o.validate(&Policy { max_entries: 1 }).unwrap_err();
        let OfferError::Refused(r) = err else {
            panic!("{err:?}")
        };
        assert_eq!(r.code, RefusalCode::TooManyEntries { max: 1 });
    }

    #[test]
    fn counts_sizes_and_paths_are_checked() {
        let none = offer(vec![], vec![], 0);
        assert!(matches!(
            none.validate(&Policy::default()),
            Err(OfferError::EntryCount { .. })
        ));
        let sum = offer(vec![vec![entry("a", 1)]], vec![], 2);
        assert_eq!(
            sum.validate(&Policy::default()).unwrap_err(),
            OfferError::SizeMismatch
        );
        let overflow = offer(vec![vec![entry("a", u64::MAX), entry("b", 2)]], vec![], 1);
        assert_eq!(
            overflow.validate(&Policy::default()).unwrap_err(),
            OfferError::SizeMismatch
        );
        let escape = offer(vec![vec![entry("../etc/passwd", 1)]], vec![], 1);
        assert!(matches!(
            escape.validate(&Policy::default()),
            Err(OfferError::Path(_))
        ));
        let twice = offer(vec![vec![entry("a", 1), entry("a", 1)]], vec![], 2);
        assert!(matches!(
            twice.validate(&Policy::default()),
            Err(OfferError::Path(_))
        ));
        let mut short = offer(vec![vec![entry("a", 1)], vec![entry("b", 1)]], vec![], 2);
        short.entries.pop();
        assert_eq!(
            short.validate(&Policy::default()).unwrap_err(),
            OfferError::Incomplete
        );
        let mut long = offer(vec![vec![entry("a", 1)]], vec![], 1);
        long.entries.push(OfferEntries(vec![entry("b", 0)]));
        assert_eq!(
            long.validate(&Policy::default()).unwrap_err(),
            OfferError::EntriesMismatch
        );
        let mut empty_batch = offer(vec![vec![entry("a", 1)]], vec![], 1);
        empty_batch.entries.insert(0, OfferEntries(vec![]));
        assert_eq!(
            empty_batch.validate(&Policy::default()).unwrap_err(),
            OfferError::EntriesMismatch
        );
    }

    #[test]
    fn the_paths_are_bounded_while_they_arrive() {
        // Paths of about 4,000 bytes (the most one path may have), 1,000 to a batch.
        let long = vec!["x".repeat(199); 20].join("/");
        let n = MAX_MANIFEST_PATH_BYTES / long.len() + 1;
        let policy = Policy {
            max_entries: 1 << 20,
        };
        let mut reader = ManifestReader::new(start(n as u64, 0, 0), &policy).unwrap();
        let mut err = None;
        for b in 0..n.div_ceil(1000) {
            let batch = (b * 1000..n.min((b + 1) * 1000))
                .map(|i| entry(&format!("{i}{long}"), 0))
                .collect();
            if let Err(e) = reader.entries(OfferEntries(batch)) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(OfferError::PathBytes));
    }
}
