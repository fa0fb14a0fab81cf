//! Removing leftover partial files (and their resume records) older than an age.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, OFlags};

use super::{Destination, TEMP_PREFIX, is_part_name};
use crate::fsutil::{open_beneath, stat_nofollow};
use crate::transfer::resume::Sidecar;

impl Destination {
    /// Removes this user's partial files (and resume records) below the destination whose
    /// last change is older than `max_age`, and returns what was removed. Nothing is
    /// followed through a symlink; files of other users are left alone.
    pub fn remove_stale(&self, max_age: Duration) -> io::Result<Vec<Removed>> {
        let now = SystemTime::now();
        let me = rustix::process::geteuid().as_raw();
        let mut removed = Vec::new();
        let mut todo: Vec<Vec<String>> = vec![Vec::new()];
        while let Some(comps) = todo.pop() {
            let refs: Vec<&str> = comps.iter().map(String::as_str).collect();
            let Ok(Some(w)) = self.walk(&refs, false) else {
                continue;
            };
            let Some(dir) = w.fds.last() else { continue };
            let Ok(entries) = rustix::fs::Dir::read_from(dir.as_fd()) else {
                continue;
            };
            let mut stale: Vec<(String, u64)> = Vec::new();
            let mut sidecars: Vec<String> = Vec::new();
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().to_str() else {
                    continue;
                };
                if name == "." || name == ".." {
                    continue;
                }
                let Ok(st) = stat_nofollow(dir.as_fd(), name) else {
                    continue;
                };
                let ft = FileType::from_raw_mode(st.st_mode);
                if ft == FileType::Directory {
                    let mut next = comps.clone();
                    next.push(name.to_string());
                    todo.push(next);
                    continue;
                }
                let ours = name.starts_with(TEMP_PREFIX)
                    && (is_part_name(name)
                        || name.ends_with(crate::transfer::resume::SIDECAR_SUFFIX)
                        || name.ends_with(".tmp"));
                if !ours || ft != FileType::RegularFile || st.st_uid != me {
                    continue;
                }
                let changed = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(u64::try_from(st.st_mtime).unwrap_or(0));
                if now.duration_since(changed).unwrap_or_default() < max_age {
                    continue;
                }
                if is_part_name(name) {
                    stale.push((name.to_string(), u64::try_from(st.st_size).unwrap_or(0)));
                } else {
                    sidecars.push(name.to_string());
                }
            }
            // The real names of the partial files, from their resume records.
            let mut real = std::collections::HashMap::new();
            for s in &sidecars {
                if let Ok(Some(sc)) = Sidecar::load_at(dir.as_fd(), s) {
                    real.insert(sc.part.clone(), sc.path.clone());
                }
            }
            let here = comps.join("/");
            let at = |n: &str| {
                if here.is_empty() {
                    n.to_string()
                } else {
                    format!("{here}/{n}")
                }
            };
            for (name, bytes) in stale {
                // Not one a transfer holds right now (it keeps a lock while it writes).
                let Ok(fd) = open_beneath(dir.as_fd(), &name, OFlags::RDONLY | OFlags::NONBLOCK, 0)
                else {
                    continue;
                };
                if rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                    .is_err()
                {
                    continue;
                }
                if rustix::fs::unlinkat(dir.as_fd(), name.as_str(), AtFlags::empty()).is_ok() {
                    removed.push(Removed {
                        path: real.get(&name).cloned().unwrap_or_else(|| at(&name)),
                        bytes,
                    });
                }
            }
            for s in sidecars {
                let _ = rustix::fs::unlinkat(dir.as_fd(), s.as_str(), AtFlags::empty());
            }
            if !removed.is_empty() {
                let _ = rustix::fs::fsync(dir.as_fd());
            }
        }
        Ok(removed)
    }
}

/// A leftover partial file [`Destination::remove_stale`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The relative path of the file it was part of (from its resume record), or of the
    /// temporary file itself.
    pub path: String,
    /// Its size.
    pub bytes: u64,
}
