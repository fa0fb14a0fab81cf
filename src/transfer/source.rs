//! The sending side's view of the files: walking the paths given on the command line.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::transfer::paths::{RelPath, escape};

/// Errors collecting the files to send.
#[derive(Debug, Error)]
pub enum SourceError {
    /// A device, FIFO or socket.
    #[error("{0} is not a regular file or directory (devices, FIFOs and sockets are refused)")]
    NotRegular(String),
    /// A name that the receiver would refuse.
    #[error("{0} cannot be sent: {1}")]
    BadName(String, crate::transfer::paths::PathError),
    /// Nothing to send.
    #[error("no files to send")]
    Empty,
    /// IO.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// One file to send.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its name at the receiver.
    pub rel: RelPath,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: i64,
}

/// The files under `paths` (files as themselves, directories recursively, names relative
/// to each argument's parent, sorted), and the symlinks that were skipped.
pub fn collect(paths: &[PathBuf]) -> Result<(Vec<SourceFile>, Vec<PathBuf>), SourceError> {
    let c = collect_with_dirs(paths)?;
    if c.files.is_empty() {
        return Err(SourceError::Empty);
    }
    Ok((c.files, c.skipped))
}

/// What [`collect_with_dirs`] found.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// The files, sorted by name.
    pub files: Vec<SourceFile>,
    /// The directories with no file anywhere beneath them (recreated by the receiver),
    /// sorted.
    pub dirs: Vec<RelPath>,
    /// The symlinks that were skipped.
    pub skipped: Vec<PathBuf>,
}

/// [`collect`], and the empty directories: an offer may hold only those.
pub fn collect_with_dirs(paths: &[PathBuf]) -> Result<Collected, SourceError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut dirs = Vec::new();
    for p in paths {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| {
                fs::canonicalize(p)
                    .ok()
                    .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
            })
            .unwrap_or_default();
        walk(p, &name, &mut files, &mut dirs, &mut skipped)?;
    }
    if files.is_empty() && dirs.is_empty() {
        return Err(SourceError::Empty);
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    dirs.sort();
    Ok(Collected {
        files,
        dirs,
        skipped,
    })
}

fn walk(
    path: &Path,
    rel: &str,
    files: &mut Vec<SourceFile>,
    dirs: &mut Vec<RelPath>,
    skipped: &mut Vec<PathBuf>,
) -> Result<(), SourceError> {
    let shown = || escape(&path.to_string_lossy());
    let io = |source| SourceError::Io {
        path: shown(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(io)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        skipped.push(path.to_path_buf());
        return Ok(());
    }
    if ft.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path)
            .map_err(io)?
            .collect::<Result<_, _>>()
            .map_err(io)?;
        entries.sort_by_key(|e| e.file_name());
        let before = (files.len(), dirs.len());
        for e in entries {
            let child = format!("{rel}/{}", e.file_name().to_string_lossy());
            walk(&e.path(), &child, files, dirs, skipped)?;
        }
        if (files.len(), dirs.len()) == before {
            // Nothing beneath it travels as a file: the directory itself does.
            let rel = RelPath::parse(rel).map_err(|e| SourceError::BadName(shown(), e))?;
            dirs.push(rel);
        }
        return Ok(());
    }
    if !ft.is_file() {
        return Err(SourceError::NotRegular(shown()));
    }
    let rel = RelPath::parse(rel).map_err(|e| SourceError::BadName(shown(), e))?;
    files.push(SourceFile {
        path: path.to_path_buf(),
        rel,
        size: meta.len(),
        mode: meta.permissions().mode() & 0o777,
        mtime: meta.mtime(),
    });
    Ok(())
}
