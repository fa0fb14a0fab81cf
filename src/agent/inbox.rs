//! The inbox's file operations: the staging folder a delivery item is received into
//! (`.conduit-agent/<sender key>/<item id>/` inside the inbox, so a retry resumes there
//! and a crash leaves the file findable), giving a file its name without replacing
//! another (the conflict rules), and the `on_receive` program.
//!
//! The agent never opens, executes or interprets a received file: it hashes the staged
//! copy a crash left behind, renames files, and passes their path to `on_receive`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::agent::config::OnConflict;
use crate::transfer::dest::is_part_name;

/// The staging folder inside each inbox (hidden: outbox rules ignore `.*` too).
pub const STAGING_DIR: &str = ".conduit-agent";
/// Most numbered names tried for one file (`name (1).ext` ...).
const MAX_RENAMES: u32 = 10_000;

/// The staging folder of one item from one sender.
pub fn staging_dir(inbox: &Path, sender_key: &str, item: &str) -> PathBuf {
    inbox.join(STAGING_DIR).join(sender_key).join(item)
}

/// The BLAKE3 of a complete staged copy of `name` (`size` bytes), if there is one: a
/// regular file under its final name (the receiver renames a file to it only once it
/// is complete and verified).
pub fn staged_copy(
    staging: &Path,
    name: &str,
    size: u64,
    alg: crate::crypto::file_hash::HashAlg,
) -> Option<crate::crypto::file_hash::FileHash> {
    let path = staging.join(name);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.file_type().is_file() || meta.len() != size {
        return None;
    }
    let mut h = crate::crypto::file_hash::Hasher::new(alg);
    h.update_reader(std::fs::File::open(&path).ok()?).ok()?;
    Some(h.finalize())
}

/// Every complete staged file of an inbox: (sender key, item id, name, size).
pub fn staged(inbox: &Path) -> io::Result<Vec<(String, String, String, u64)>> {
    let root = inbox.join(STAGING_DIR);
    let mut out = Vec::new();
    let senders = match std::fs::read_dir(&root) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for s in senders.flatten() {
        let Ok(sender) = s.file_name().into_string() else {
            continue;
        };
        let Ok(items) = std::fs::read_dir(s.path()) else {
            continue;
        };
        for i in items.flatten() {
            let Ok(item) = i.file_name().into_string() else {
                continue;
            };
            let Ok(files) = std::fs::read_dir(i.path()) else {
                continue;
            };
            for f in files.flatten() {
                let Ok(name) = f.file_name().into_string() else {
                    continue;
                };
                let Ok(meta) = std::fs::symlink_metadata(f.path()) else {
                    continue;
                };
                if meta.file_type().is_file() && !is_part_name(&name) && !name.starts_with('.') {
                    out.push((sender.clone(), item.clone(), name, meta.len()));
                }
            }
        }
    }
    Ok(out)
}

/// `name` numbered: `report (2).pdf` for `report.pdf`, `notes (2)` for `notes`.
pub fn numbered(name: &str, n: u32) -> String {
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

/// Moves `from` into `dir` (created 0700 if missing) as `name`: replacing a file of that
/// name (`overwrite`), or under the first free numbered name (`rename`, `refuse`: a
/// refusal was decided before the transfer; a name taken since is renamed, never
/// replaced). Never replaces anything else; the directory is synced. Returns the path.
pub fn place(from: &Path, dir: &Path, name: &str, rule: OnConflict) -> io::Result<PathBuf> {
    crate::fsutil::private_dir(dir)?;
    std::fs::symlink_metadata(from)?;
    let placed = if rule == OnConflict::Overwrite {
        let to = dir.join(name);
        std::fs::rename(from, &to)?;
        to
    } else {
        let mut placed = None;
        for n in 1..=MAX_RENAMES {
            let candidate = if n == 1 {
                name.to_string()
            } else {
                numbered(name, n)
            };
            let to = dir.join(&candidate);
            // A hard link fails if the name is taken: nothing is ever replaced.
            match std::fs::hard_link(from, &to) {
                Ok(()) => {
                    std::fs::remove_file(from)?;
                    placed = Some(to);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        placed.ok_or_else(|| io::Error::other(format!("no free name for {name}")))?
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(placed)
}

/// Runs `argv` (an absolute program path, then arguments) with the received file's path
/// as the last argument and its metadata in the environment (`CONDUIT_FILE`,
/// `CONDUIT_SENDER`, `CONDUIT_SENDER_KEY`, `CONDUIT_SIZE`, and `CONDUIT_BLAKE3` or, for
/// a file from a FIPS session, `CONDUIT_SHA256`), never
/// through a shell, with an empty environment otherwise; killed after `timeout`. The
/// program must be a regular file owned by this user and writable by no one else.
/// Returns how it ended (`exit 0`, `killed after the timeout`...) and how long it ran.
pub fn run_hook(
    argv: &[String],
    file: &Path,
    sender: &str,
    sender_key: &str,
    hash: &crate::crypto::file_hash::FileHash,
    size: u64,
    timeout: Duration,
) -> io::Result<(String, Duration)> {
    use std::os::unix::fs::MetadataExt;
    let Some(program) = argv.first() else {
        return Err(io::Error::other("no program"));
    };
    let meta = std::fs::metadata(program)?;
    let uid = rustix::process::geteuid().as_raw();
    if !meta.is_file() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{program} must be a regular file owned by this user and writable by no one else"
        )));
    }
    let started = Instant::now();
    let mut child = std::process::Command::new(program)
        .args(&argv[1..])
        .arg(file)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CONDUIT_FILE", file)
        .env("CONDUIT_SENDER", sender)
        .env("CONDUIT_SENDER_KEY", sender_key)
        .env(
            format!("CONDUIT_{}", hash.alg().name().to_ascii_uppercase()),
            hash.to_hex(),
        )
        .env("CONDUIT_SIZE", size.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    loop {
        if let Some(status) = child.try_wait()? {
            let text = match status.code() {
                Some(c) => format!("exit {c}"),
                None => "killed by a signal".to_string(),
            };
            return Ok((text, started.elapsed()));
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok((
                format!("killed after the timeout ({} s)", timeout.as_secs()),
                started.elapsed(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::file_hash::{FileHash, HashAlg};

    #[test]
    fn a_taken_name_is_numbered_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).unwrap();
        std::fs::write(inbox.join("r.pdf"), "old").unwrap();
        let staged = dir.path().join("new");
        std::fs::write(&staged, "new").unwrap();
        let placed = place(&staged, &inbox, "r.pdf", OnConflict::Rename).unwrap();
        assert_eq!(placed, inbox.join("r (2).pdf"));
        assert_eq!(std::fs::read(inbox.join("r.pdf")).unwrap(), b"old");
        assert_eq!(std::fs::read(&placed).unwrap(), b"new");
        assert!(!staged.exists());
        std::fs::write(&staged, "newer").unwrap();
        place(&staged, &inbox, "r.pdf", OnConflict::Overwrite).unwrap();
        assert_eq!(std::fs::read(inbox.join("r.pdf")).unwrap(), b"newer");
        assert_eq!(numbered("notes", 3), "notes (3)");
        assert_eq!(numbered(".x", 2), ".x (2)");
    }

    #[test]
    fn a_complete_staged_copy_is_found_and_a_partial_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let staging = staging_dir(dir.path(), "cpk1x", "00aa");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("a.pdf"), "abc").unwrap();
        std::fs::write(staging.join(".conduit-1.part"), "ab").unwrap();
        for alg in [HashAlg::Blake3, HashAlg::Sha256] {
            assert_eq!(
                staged_copy(&staging, "a.pdf", 3, alg),
                Some(FileHash::of(alg, b"abc"))
            );
            assert_eq!(staged_copy(&staging, "a.pdf", 4, alg), None);
        }
        let all = staged(dir.path()).unwrap();
        assert_eq!(
            all,
            vec![("cpk1x".into(), "00aa".into(), "a.pdf".into(), 3)]
        );
    }

    #[test]
    fn the_hook_runs_without_a_shell_and_is_killed_after_its_timeout() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("got; rm -rf x.pdf");
        std::fs::write(&file, "x").unwrap();
        let h = FileHash::blake3(b"x");
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
            p.to_string_lossy().into_owned()
        };
        let marker = dir.path().join("ran");
        // The path arrives as one argument, however it is spelt; the metadata in the
        // environment.
        let ok = script(
            "ok.sh",
            &format!(
                "test \"$1\" = first && test -f \"$2\" && test \"$CONDUIT_SENDER\" = lab \\\n && test \"$CONDUIT_BLAKE3\" = {} && touch {}",
                h.to_hex(),
                marker.display()
            ),
        );
        let run = |argv: &[&str], secs| {
            let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            run_hook(
                &argv,
                &file,
                "lab",
                "cpk1",
                &h,
                1,
                Duration::from_secs(secs),
            )
        };
        let (status, _) = run(&[&ok, "first"], 10).unwrap();
        assert_eq!(status, "exit 0");
        assert!(marker.exists());
        let slow = script("slow.sh", "sleep 5");
        let (status, took) = run(&[&slow], 1).unwrap();
        assert!(status.contains("timeout"), "{status}");
        assert!(took < Duration::from_secs(4));
        // Writable by others: not run.
        std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o722)).unwrap();
        assert!(run(&[&slow], 1).is_err());
        assert!(run(&["/nonexistent/hook"], 1).is_err());
    }
}
