//! The receiver's filesystem (issue 17): private modes, no write outside the destination
//! whatever an attacker does to it during a transfer, partial files adopted only when
//! they are ours, names at the limits, durable progress for a killed sender, and old
//! partial files removed with an audit record. Real `conduit` processes on loopback.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{
    Pair, Running, blake3_file, conduit, direct_receiver, events, pair_knowing, text,
    wait_for_durable, write_data, write_large,
};
use phi_conduit::crypto::identity::PublicKey;
use phi_conduit::crypto::stream::DEFAULT_CHUNK_SIZE;
use phi_conduit::transfer::paths::RelPath;
use phi_conduit::transfer::resume::Sidecar;

/// A receiver started with umask 022 (the common default, which would let 0644 through).
fn receiver_umask_022(p: &Pair, out: &Path, extra: &[&str]) -> (Running, String) {
    let mut cmd = conduit(&p.receiver);
    cmd.args(["receive", "--json", "--listen", "127.0.0.1:0", "--out"])
        .arg(out)
        .args(extra);
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let r = Running::spawn(cmd);
    let addr = r.first["addr"].as_str().unwrap().to_string();
    (r, addr)
}

/// `conduit send paths --to lab --direct addr --json`.
fn send(p: &Pair, paths: &[&Path], addr: &str) -> std::process::Output {
    conduit(&p.sender)
        .arg("send")
        .args(paths)
        .args(["--json", "--to", "lab", "--direct", addr])
        .output()
        .unwrap()
}

/// Sends `paths`, expects both sides to succeed; returns the receiver's events.
fn transfer_ok(p: &Pair, paths: &[&Path], out: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let (mut rx, addr) = receiver_umask_022(p, out, extra);
    let sent = send(p, paths, &addr);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let (status, stdout, err) = rx.finish();
    assert!(status.success(), "{err}");
    events(&stdout)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// A tree with files of mode 0777, 0755, 0644 and directories 0755 and 0777.
fn loose_tree(root: &Path) -> PathBuf {
    let src = root.join("study");
    std::fs::create_dir_all(src.join("series/images")).unwrap();
    for (name, m) in [
        ("run.sh", 0o777),
        ("series/tool", 0o755),
        ("series/images/a.dcm", 0o644),
    ] {
        std::fs::write(src.join(name), name.as_bytes()).unwrap();
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(m)).unwrap();
    }
    std::fs::set_permissions(src.join("series"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(
        src.join("series/images"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    src
}

#[test]
fn files_arrive_0600_and_directories_0700_whatever_the_sender_s_modes() {
    let p = pair_knowing(true, true);
    let src = loose_tree(&p.root);
    let out = p.root.join("out");
    transfer_ok(&p, &[&src], &out, &[]);
    let got = out.join("study");
    for f in ["run.sh", "series/tool", "series/images/a.dcm"] {
        assert_eq!(mode(&got.join(f)), 0o600, "{f}");
        assert_eq!(std::fs::read(got.join(f)).unwrap(), f.as_bytes());
    }
    for d in ["", "series", "series/images"] {
        assert_eq!(mode(&got.join(d)), 0o700, "directory {d:?}");
    }
    assert_eq!(mode(&out), 0o700, "the destination it created");
}

#[test]
fn keep_modes_keeps_only_the_owner_s_execute_bit() {
    let p = pair_knowing(true, true);
    let src = loose_tree(&p.root);
    let out = p.root.join("out");
    transfer_ok(&p, &[&src], &out, &["--keep-modes"]);
    let got = out.join("study");
    assert_eq!(mode(&got.join("run.sh")), 0o700);
    assert_eq!(mode(&got.join("series/tool")), 0o700);
    assert_eq!(mode(&got.join("series/images/a.dcm")), 0o600);
    assert_eq!(mode(&got.join("series")), 0o700);
}

/// Everything (files, directories, symlinks) below `dir`.
fn everything_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn a_directory_swapped_for_a_symlink_during_the_transfer_never_redirects_a_write() {
    let p = pair_knowing(true, true);
    // Many files in one directory, so that the swap lands between files and during them.
    let src = p.root.join("batch");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..150 {
        write_data(&src.join(format!("sub/f{i:03}.bin")), 64 << 10);
    }
    write_large(&src.join("sub/zz-big.bin"), 48 << 20);
    let out = p.root.join("out");
    let outside = p.root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();

    // The attacker: whenever out/batch/sub is a directory, moves it aside and puts a
    // symlink to `outside` in its place, then puts it back; over and over.
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let attacker = {
        let (stop, swaps) = (Arc::clone(&stop), Arc::clone(&swaps));
        let (sub, aside, outside) = (
            out.join("batch/sub"),
            out.join("batch/sub.aside"),
            outside.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let is_dir = std::fs::symlink_metadata(&sub).is_ok_and(|m| m.is_dir());
                if is_dir && std::fs::rename(&sub, &aside).is_ok() {
                    if std::os::unix::fs::symlink(&outside, &sub).is_ok() {
                        swaps.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(std::time::Duration::from_micros(300));
                        let _ = std::fs::remove_file(&sub);
                    }
                    let _ = std::fs::rename(&aside, &sub);
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let (mut rx, addr) = direct_receiver(&p, &out, &[]);
    let sent = send(&p, &[&src], &addr);
    let (rx_status, _, rx_err) = rx.finish();
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    assert!(
        swaps.load(Ordering::Relaxed) > 0,
        "the attacker never got in"
    );
    let leaked = everything_under(&outside);
    assert!(
        leaked.is_empty(),
        "written outside the destination: {leaked:?}"
    );
    // Either the transfer went through (into the real directory) or it failed clearly;
    // never a file under its final name that is not the sender's.
    if sent.status.success() {
        assert!(rx_status.success(), "{rx_err}");
    }
    for f in everything_under(&out) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if f.is_file() && !name.starts_with(".conduit-") {
            let orig = src.join("sub").join(&name);
            assert_eq!(blake3_file(&f), blake3_file(&orig), "{}", f.display());
        }
    }
}

/// Plants, in `out`, the partial file and sidecar an interrupted transfer of `src` (sent
/// as `name`) from `sender_home` would have left after `chunks` chunks; returns the
/// partial file's path.
fn plant_part(sender_home: &Path, src: &Path, name: &str, out: &Path, chunks: u64) -> PathBuf {
    std::fs::create_dir_all(out).unwrap();
    let key = PublicKey::parse(&common::key_of(sender_home)).unwrap();
    let rel = RelPath::parse(name).unwrap();
    let chunk = u64::from(DEFAULT_CHUNK_SIZE.get());
    let part_name = ".conduit-0123456789abcdef0123456789abcdef.part";
    let part = out.join(part_name);
    let data = std::fs::read(src).unwrap();
    std::fs::write(&part, &data[..(chunks * chunk) as usize]).unwrap();
    std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o600)).unwrap();
    let meta = std::fs::metadata(src).unwrap();
    let sidecar = serde_json::json!({
        "v": 2, "sender": key.to_string(), "path": name, "part": part_name,
        "size": meta.len(), "mtime": meta.mtime(), "chunk_size": chunk,
        "durable_chunks": chunks,
    });
    let sc = out.join(Sidecar::name_for(&key, &rel));
    std::fs::write(&sc, sidecar.to_string()).unwrap();
    std::fs::set_permissions(&sc, std::fs::Permissions::from_mode(0o600)).unwrap();
    part
}

fn done(evs: &[serde_json::Value]) -> &serde_json::Value {
    evs.iter().find(|e| e["event"] == "done").unwrap()
}

#[test]
fn only_a_private_partial_file_of_ours_is_adopted() {
    let size = 12 * u64::from(DEFAULT_CHUNK_SIZE.get()) + 1234;
    // The control: a planted partial file that passes every check is resumed from.
    let p = pair_knowing(true, true);
    let src = p.root.join("scan.bin");
    write_large(&src, size);
    let out = p.root.join("out");
    plant_part(&p.sender, &src, "scan.bin", &out, 6);
    let evs = transfer_ok(&p, &[&src], &out, &[]);
    assert_eq!(
        done(&evs)["resumed_bytes"].as_u64(),
        Some(6 * u64::from(DEFAULT_CHUNK_SIZE.get()))
    );
    assert_eq!(blake3_file(&out.join("scan.bin")), blake3_file(&src));

    type Spoil = fn(&Path, &Path);
    let mut cases: Vec<(&str, Spoil)> = vec![
        ("mode is not 0600", |part, _| {
            std::fs::set_permissions(part, std::fs::Permissions::from_mode(0o644)).unwrap();
        }),
        ("has more than one link", |part, elsewhere| {
            std::fs::hard_link(part, elsewhere.join("linked")).unwrap();
        }),
        ("is a symlink", |part, elsewhere| {
            std::fs::rename(part, elsewhere.join("target")).unwrap();
            std::os::unix::fs::symlink(elsewhere.join("target"), part).unwrap();
        }),
        ("sidecar mode", |part, _| {
            let dir = part.parent().unwrap();
            for (sc, _) in common::sidecars(dir) {
                std::fs::set_permissions(&sc, std::fs::Permissions::from_mode(0o640)).unwrap();
            }
        }),
    ];
    // Another user's file (only root can make one here).
    if rustix::process::geteuid().is_root() {
        cases.push(("owned by another user", |part, _| {
            std::os::unix::fs::chown(part, Some(65_534), None).unwrap();
        }));
    } else {
        eprintln!("SKIP the other-user case: not root");
    }
    for (what, spoil) in cases {
        let out = p.root.join(format!("out-{}", what.replace(' ', "-")));
        let elsewhere = p.root.join(format!("elsewhere-{}", what.replace(' ', "-")));
        std::fs::create_dir_all(&elsewhere).unwrap();
        let part = plant_part(&p.sender, &src, "scan.bin", &out, 6);
        spoil(&part, &elsewhere);
        let before: Vec<(PathBuf, blake3::Hash)> = everything_under(&elsewhere)
            .into_iter()
            .map(|f| (f.clone(), blake3_file(&f)))
            .collect();
        let evs = transfer_ok(&p, &[&src], &out, &[]);
        assert_eq!(done(&evs)["resumed_bytes"], 0, "{what}: adopted");
        assert!(
            evs.iter().any(|e| e["event"] == "warning"
                && e["message"].as_str().unwrap().contains("not adopted")),
            "{what}: no warning in {evs:?}"
        );
        assert_eq!(
            blake3_file(&out.join("scan.bin")),
            blake3_file(&src),
            "{what}"
        );
        // Left alone: still there, and nothing it links to was changed.
        assert!(std::fs::symlink_metadata(&part).is_ok(), "{what}: removed");
        for (f, h) in before {
            assert_eq!(blake3_file(&f), h, "{what}: {} changed", f.display());
        }
    }
}

#[test]
fn a_sidecar_name_raced_with_symlinks_during_the_transfer_never_writes_through_them() {
    let p = pair_knowing(true, true);
    let src = p.root.join("scan.bin");
    write_large(&src, 96 << 20);
    let out = p.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let outside = p.root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The attacker knows the sender's key and the name: it can compute the sidecar's
    // name, and keeps putting a symlink to its victim there during the transfer.
    let key = PublicKey::parse(&common::key_of(&p.sender)).unwrap();
    let sc = out.join(Sidecar::name_for(
        &key,
        &RelPath::parse("scan.bin").unwrap(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, victim) = (Arc::clone(&stop), victim.clone());
        std::thread::spawn(move || {
            let mut planted = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(&sc);
                if std::os::unix::fs::symlink(&victim, &sc).is_ok() {
                    planted += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let _ = std::fs::remove_file(&sc);
            planted
        })
    };
    let (mut rx, addr) = direct_receiver(&p, &out, &[]);
    let sent = send(&p, &[&src], &addr);
    let (rx_status, _, rx_err) = rx.finish();
    stop.store(true, Ordering::Relaxed);
    assert!(attacker.join().unwrap() > 0);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(rx_status.success(), "{rx_err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(everything_under(&outside), vec![victim.clone()]);
    assert_eq!(blake3_file(&out.join("scan.bin")), blake3_file(&src));
}

#[test]
fn a_final_name_that_is_a_directory_is_refused_at_the_offer_even_with_overwrite() {
    let p = pair_knowing(true, true);
    let src = p.root.join("report.pdf");
    write_data(&src, 1 << 20);
    let out = p.root.join("out");
    std::fs::create_dir_all(out.join("report.pdf")).unwrap();
    std::fs::write(out.join("report.pdf/keep.txt"), b"mine").unwrap();
    let (mut rx, addr) = receiver_umask_022(&p, &out, &["--overwrite"]);
    let sent = send(&p, &[&src], &addr);
    assert!(!sent.status.success());
    let err = text(&sent.stderr);
    assert!(err.contains("is a directory at the receiver"), "{err}");
    let (status, _, _) = rx.finish();
    assert!(!status.success());
    assert_eq!(
        std::fs::read(out.join("report.pdf/keep.txt")).unwrap(),
        b"mine"
    );
    assert!(
        common::parts(&out).is_empty(),
        "data moved before the refusal"
    );
}

#[test]
fn a_255_byte_final_name_arrives() {
    let p = pair_knowing(true, true);
    let name = format!("{}.pdf", "n".repeat(251));
    assert_eq!(name.len(), 255);
    let src = p.root.join(&name);
    write_data(&src, 300_000);
    let out = p.root.join("out");
    transfer_ok(&p, &[&src], &out, &[]);
    assert_eq!(blake3_file(&out.join(&name)), blake3_file(&src));
    assert!(common::parts(&out).is_empty());
}

#[test]
fn a_path_over_the_limit_is_refused_before_anything_is_created() {
    let p = pair_knowing(true, true);
    // The receiver's destination is 1,000+ bytes deep; the offered path 3,200 bytes.
    let mut out = p.root.clone();
    for i in 0..5 {
        out.push(format!("{i}{}", "d".repeat(199)));
    }
    std::fs::create_dir_all(&out).unwrap();
    let mut src = p.root.join("s");
    let top = src.clone();
    for i in 0..16 {
        src.push(format!("{i:02}{}", "p".repeat(198)));
    }
    std::fs::create_dir_all(&src).unwrap();
    write_data(&src.join("deep.txt"), 100);
    let (mut rx, addr) = receiver_umask_022(&p, &out, &[]);
    let sent = send(&p, &[&top], &addr);
    assert!(!sent.status.success(), "{}", text(&sent.stdout));
    let err = text(&sent.stderr);
    assert!(err.contains("bytes long at the receiver"), "{err}");
    let (status, _, _) = rx.finish();
    assert!(!status.success());
    assert!(
        std::fs::read_dir(&out).unwrap().next().is_none(),
        "something was created: {:?}",
        everything_under(&out)
    );
}

#[test]
fn a_sender_killed_halfway_through_512_mib_resumes_most_of_it() {
    const SIZE: u64 = 512 << 20;
    let p = pair_knowing(true, true);
    let src = p.root.join("big.bin");
    write_large(&src, SIZE);
    let out = p.root.join("out");
    let (mut rx, addr) = direct_receiver(&p, &out, &[]);
    let mut tx = Running::spawn({
        let mut c = conduit(&p.sender);
        c.arg("send")
            .arg(&src)
            .args(["--json", "--to", "lab", "--direct", &addr]);
        c
    });
    wait_for_durable(&out, "big.bin", SIZE / 2);
    tx.signal(libc::SIGKILL);
    let _ = tx.finish();
    // The receiver would notice at its idle timeout; its user stops it instead.
    rx.signal(libc::SIGTERM);
    let _ = rx.finish();
    assert!(!out.join("big.bin").exists());

    let evs = transfer_ok(&p, &[&src], &out, &[]);
    let resumed = done(&evs)["resumed_bytes"].as_u64().unwrap();
    eprintln!("resumed {resumed} of {SIZE} bytes");
    assert!(
        resumed * 10 > SIZE * 4,
        "resumed only {resumed} of {SIZE} bytes"
    );
    assert_eq!(blake3_file(&out.join("big.bin")), blake3_file(&src));
    assert!(common::parts(&out).is_empty() && common::sidecars(&out).is_empty());
}

#[test]
fn an_old_partial_file_is_removed_at_start_with_an_audit_record() {
    let p = pair_knowing(true, true);
    let out = p.root.join("out");
    std::fs::create_dir_all(out.join("sub")).unwrap();
    let old = out.join("sub/.conduit-00000000000000000000000000000000.part");
    let fresh = out.join(".conduit-11111111111111111111111111111111.part");
    let foreign = out.join("sub/not-ours.part");
    for f in [&old, &fresh, &foreign] {
        std::fs::write(f, [7u8; 4321]).unwrap();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let eight_days = std::time::SystemTime::now() - std::time::Duration::from_secs(8 * 86_400);
    for f in [&old, &foreign] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(eight_days)
            .unwrap();
    }
    let src = p.root.join("note.txt");
    std::fs::write(&src, b"synthetic note").unwrap();
    let (mut rx, addr) = receiver_umask_022(&p, &out, &[]);
    let sent = send(&p, &[&src], &addr);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let (status, _, err) = rx.finish();
    assert!(status.success(), "{err}");
    assert!(err.contains("removed the partial file"), "{err}");
    assert!(!old.exists(), "the old partial file is still there");
    assert!(fresh.exists() && foreign.exists(), "removed too much");

    let log: String = std::fs::read_dir(p.receiver.join("audit"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let rec: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["event"] == "partial_removed")
        .unwrap_or_else(|| panic!("no record in {log}"));
    assert_eq!(rec["size"], 4321);
    assert_eq!(
        rec["path"],
        "sub/.conduit-00000000000000000000000000000000.part"
    );
    let verify = conduit(&p.receiver)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify.stderr));

    // With --part-max-age-days 0, nothing is removed.
    std::fs::File::options()
        .write(true)
        .open(&fresh)
        .unwrap()
        .set_modified(eight_days)
        .unwrap();
    let (mut rx, addr) = receiver_umask_022(&p, &out, &["--part-max-age-days", "0", "--overwrite"]);
    let sent = send(&p, &[&src], &addr);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(rx.finish().0.success());
    assert!(fresh.exists());
}

/// A sender of `paths` to the receiver at `addr` that pauses after writing `pause`
/// chunks of a file (`CONDUIT_TEST_PAUSE_SENDER`, src/transfer/data.rs) until `hook/resume`
/// exists; returns once it is paused.
fn paused_sender(
    p: &Pair,
    paths: &[&Path],
    addr: &str,
    pause: u64,
    hook: &Path,
) -> std::process::Child {
    std::fs::create_dir_all(hook).unwrap();
    let mut sender = conduit(&p.sender)
        .arg("send")
        .args(paths)
        .args(["--json", "--to", "lab", "--direct", addr])
        .env(
            "CONDUIT_TEST_PAUSE_SENDER",
            format!("{pause}:{}", hook.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !hook.join("paused").exists() {
        if let Some(status) = sender.try_wait().unwrap() {
            panic!("the sender ended ({status}) before it paused");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sender never paused"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    sender
}

/// `conduit audit show --json` of `home`.
fn audit_records(home: &Path) -> Vec<serde_json::Value> {
    let out = conduit(home)
        .args(["audit", "show", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    events(&text(&out.stdout))
}

#[test]
fn a_partial_file_swapped_after_the_offer_is_not_finished_with_other_content() {
    // Two files: a large first one (it has the whole file window, so the second file's
    // stream opens only after it) and one the receiver holds in part. The sender pauses
    // in the first file, after the receiver planned to continue the second: then another
    // partial file of ours (0600, one link: it passes every check) is renamed onto the
    // planned partial file's name.
    let chunk = u64::from(DEFAULT_CHUNK_SIZE.get());
    let p = pair_knowing(true, true);
    let big = p.root.join("a-first.bin");
    write_large(&big, 24 * chunk);
    let src = p.root.join("scan.bin");
    write_large(&src, 12 * chunk + 1234);
    let out = p.root.join("out");
    let part = plant_part(&p.sender, &src, "scan.bin", &out, 6);
    let other = out.join(".conduit-fedcba9876543210fedcba9876543210.part");
    std::fs::write(&other, vec![0x5a; (6 * chunk) as usize]).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();

    let (mut rx, addr) = direct_receiver(&p, &out, &[]);
    let hook = p.root.join("hook");
    let sender = paused_sender(&p, &[&big, &src], &addr, 2, &hook);
    std::fs::rename(&other, &part).unwrap();
    std::fs::write(hook.join("resume"), b"").unwrap();
    let sent = sender.wait_with_output().unwrap();
    let (rx_status, rx_out, rx_err) = rx.finish();

    // Either the file failed (and has no final name), or it arrived with the source's
    // bytes; never the swapped-in bytes under a verified name.
    let got = out.join("scan.bin");
    if got.exists() {
        assert_eq!(
            blake3_file(&got),
            blake3_file(&src),
            "mixed content delivered"
        );
    } else {
        assert!(!sent.status.success() && !rx_status.success());
        assert!(
            rx_err.contains("changed since the offer"),
            "{rx_err}\n{rx_out}"
        );
        assert!(
            !audit_records(&p.receiver)
                .iter()
                .any(|r| r["event"] == "file_completed" && r["path"] == "scan.bin"),
            "recorded as completed"
        );
    }
}

#[test]
fn a_file_that_cannot_get_its_name_is_not_recorded_as_completed() {
    // The final name is free at the offer and taken while the file is received: the
    // rename fails, the file is not recorded as completed and its partial file goes.
    let chunk = u64::from(DEFAULT_CHUNK_SIZE.get());
    let p = pair_knowing(true, true);
    let src = p.root.join("scan.bin");
    write_large(&src, 8 * chunk);
    let out = p.root.join("out");
    let (mut rx, addr) = direct_receiver(&p, &out, &[]);
    let hook = p.root.join("hook");
    let sender = paused_sender(&p, &[&src], &addr, 2, &hook);
    std::fs::write(out.join("scan.bin"), b"someone else's").unwrap();
    std::fs::write(hook.join("resume"), b"").unwrap();
    let sent = sender.wait_with_output().unwrap();
    let (rx_status, _, rx_err) = rx.finish();
    assert!(!rx_status.success(), "{rx_err}");
    assert!(rx_err.contains("already exists"), "{rx_err}");
    assert!(!sent.status.success());
    assert_eq!(
        std::fs::read(out.join("scan.bin")).unwrap(),
        b"someone else's"
    );
    let records = audit_records(&p.receiver);
    assert!(
        !records.iter().any(|r| r["event"] == "file_completed"),
        "{records:?}"
    );
    assert!(
        records.iter().any(|r| r["event"] == "transfer_failed"),
        "{records:?}"
    );
    assert!(
        common::parts(&out).is_empty(),
        "the complete partial file stays"
    );
}

#[test]
fn a_destination_others_can_write_is_refused_naming_the_directory_and_the_fix() {
    let p = pair_knowing(true, true);
    let src = p.root.join("scan.bin");
    write_data(&src, 1000);

    // The destination itself, writable by all without the sticky bit: refused at start.
    let out = p.root.join("shared");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut r = conduit(&p.receiver)
        .args(["receive", "--json", "--listen", "127.0.0.1:0", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A receiver that starts listening prints its address first: then it was not refused.
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(r.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    if !first.is_empty() {
        r.kill().unwrap();
        let _ = r.wait();
        panic!("the receiver started in a world-writable destination: {first}");
    }
    let r = r.wait_with_output().unwrap();
    let err = text(&r.stderr);
    assert!(!r.status.success(), "{err}");
    assert!(
        err.contains(&out.display().to_string()) && err.contains("chmod go-w"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);

    // With the sticky bit others cannot replace our entries: accepted.
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o1777)).unwrap();
    transfer_ok(&p, &[&src], &out, &[]);
    assert_eq!(blake3_file(&out.join("scan.bin")), blake3_file(&src));

    // An existing directory below it that the transfer would use, group-writable:
    // refused at the offer, nothing created in it.
    let out = p.root.join("inbox");
    let sub = out.join("study");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o770)).unwrap();
    let dir = p.root.join("study");
    std::fs::create_dir_all(&dir).unwrap();
    write_data(&dir.join("x.dcm"), 100);
    let (mut rx, addr) = direct_receiver(&p, &out, &[]);
    let sent = send(&p, &[&dir], &addr);
    let (rx_status, _, rx_err) = rx.finish();
    assert_eq!(sent.status.code(), Some(5), "{}", text(&sent.stderr));
    assert!(!rx_status.success());
    assert!(
        rx_err.contains(&sub.display().to_string()) && rx_err.contains("chmod go-w"),
        "{rx_err}"
    );
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);

    // One owned by another user (only root can make one here).
    if rustix::process::geteuid().is_root() {
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&sub, Some(65_534), None).unwrap();
        let (mut rx, addr) = direct_receiver(&p, &out, &[]);
        let sent = send(&p, &[&dir], &addr);
        let (_, _, rx_err) = rx.finish();
        assert_eq!(sent.status.code(), Some(5), "{}", text(&sent.stderr));
        assert!(rx_err.contains("owned by uid 65534"), "{rx_err}");
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
    } else {
        eprintln!("SKIP the other-owner case: not root");
    }
}
