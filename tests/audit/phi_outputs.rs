//! PHI stays in the audit log; a cut-off audit log is detected; files we load are ours;
//! key material never shows in `Debug`; the process is not dumpable (issue 18, items 6-8).
//! Real processes of the binary, real files.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{
    Running, conduit, events, pair_knowing, same_file, send_via, start_relay, text, write_data,
};

/// Parts of the names used below that cannot turn up in hex digits, numbers or the
/// program's own words.
const NAME_PARTS: &[&str] = &[
    "Doe", "Jane", "MRN12345", "Smith", "labs", "Roe", "Richard", "Xq-", "Kowalski",
];

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

#[test]
fn a_daemon_transfer_prints_no_file_name_on_any_stream() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&[]);
    let out = p.root.join("inbox");
    // No --audit-names: hashed names are the daemon's default.
    let mut cmd = conduit(&p.receiver);
    cmd.args([
        "receive",
        "--json",
        "--daemon",
        "--relay",
        &relay.addr,
        "--relay-pin",
        &relay.pin,
        "--out",
    ])
    .arg(&out);
    let mut daemon = Running::spawn(cmd);
    assert_eq!(daemon.first["event"], "daemon");

    let dir = p.root.join("Doe Jane MRN12345");
    std::fs::create_dir_all(dir.join("labs Smith")).unwrap();
    let nested = dir.join("labs Smith").join("Kowalski Xq-report.pdf");
    write_data(&nested, 70_000);
    let single = p.root.join("Roe Richard.txt");
    std::fs::write(&single, b"referral").unwrap();
    let hashed = ["--to", "lab", "--audit-names", "hash"];
    let first = send_via(&p, &relay, &[&dir, &single], &hashed);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(same_file(
        &nested,
        &out.join("Doe Jane MRN12345/labs Smith/Kowalski Xq-report.pdf")
    ));
    // Again: the receiver refuses (the files exist), a message that quotes a name on
    // both sides.
    let again = send_via(&p, &relay, &[&single], &hashed);
    assert_eq!(again.status.code(), Some(5), "{}", text(&again.stderr));
    // A human (not JSON) sender in hashed mode, also refused.
    let human = conduit(&p.sender)
        .arg("send")
        .arg(&single)
        .args(["--relay", &relay.addr, "--relay-pin", &relay.pin])
        .args(hashed)
        .output()
        .unwrap();
    assert_eq!(human.status.code(), Some(5), "{}", text(&human.stderr));

    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_timeout(10).is_some(), "the daemon did not stop");
    let (status, stdout, stderr) = daemon.finish();
    assert!(status.success(), "{stderr}");

    let streams = [
        ("daemon stdout", stdout.clone()),
        ("daemon stderr", stderr.clone()),
        ("sender stdout", text(&first.stdout)),
        ("sender stderr", text(&first.stderr)),
        ("refused sender stdout", text(&again.stdout)),
        ("refused sender stderr", text(&again.stderr)),
        ("human sender stdout", text(&human.stdout)),
        ("human sender stderr", text(&human.stderr)),
    ];
    for (name, s) in &streams {
        for part in NAME_PARTS {
            assert!(!s.contains(part), "{part:?} in {name}:\n{s}");
        }
    }
    // The refusals were printed (hashed), so the check above had something to look at.
    let ev = events(&stdout);
    assert!(
        ev.iter()
            .any(|e| e["event"] == "error" && e["message"].as_str().unwrap().contains("#")),
        "{stdout}"
    );
    assert!(text(&human.stderr).contains("already exists there"));

    // The events carry the audit's name hash: the same value as the record's path_hash.
    let shown = conduit(&p.receiver)
        .args(["audit", "show", "--json"])
        .output()
        .unwrap();
    let records = events(&text(&shown.stdout));
    let file_hashes: Vec<&str> = records
        .iter()
        .filter(|r| r["event"] == "file_completed")
        .map(|r| r["path_hash"].as_str().unwrap())
        .collect();
    assert_eq!(file_hashes.len(), 2);
    let done_paths: Vec<&str> = ev
        .iter()
        .filter(|e| e["event"] == "file_done")
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for h in &file_hashes {
        assert!(done_paths.contains(h), "{h} not among {done_paths:?}");
    }
    for part in NAME_PARTS {
        assert!(!text(&shown.stdout).contains(part));
    }

    // The head printed at the stop is the chain's head, an anchor for --expect-head.
    let stop_head = ev
        .iter()
        .rfind(|e| e["event"] == "audit_head")
        .expect("no audit_head event");
    assert_eq!(stop_head["at"], "stop");
    let head = stop_head["head"].as_str().unwrap();
    assert!(
        stderr.contains("audit head at daemon start: ")
            && stderr.contains("audit head at daemon stop: record")
    );
    let verify = conduit(&p.receiver)
        .args(["audit", "verify", "--json", "--expect-head", head])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    assert!(relay.stop().0.success());
}

#[test]
fn a_daemon_for_people_prints_no_file_name_either() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&[]);
    let out = p.root.join("inbox");
    let mut cmd = conduit(&p.receiver);
    cmd.args([
        "receive",
        "--daemon",
        "--relay",
        &relay.addr,
        "--relay-pin",
        &relay.pin,
        "--out",
    ])
    .arg(&out);
    // The first line is text, not JSON: read the streams at the end.
    let daemon = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let file = p.root.join("Doe Jane MRN12345 Kowalski.pdf");
    write_data(&file, 5000);
    let hashed = ["--to", "lab", "--audit-names", "hash", "--relay-wait", "30"];
    let first = send_via(&p, &relay, &[&file], &hashed);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let again = send_via(&p, &relay, &[&file], &hashed);
    assert_eq!(again.status.code(), Some(5), "{}", text(&again.stderr));
    let pid = i32::try_from(daemon.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let done = daemon.wait_with_output().unwrap();
    assert!(done.status.success());
    let (stdout, stderr) = (text(&done.stdout), text(&done.stderr));
    for (name, s) in [("stdout", &stdout), ("stderr", &stderr)] {
        for part in NAME_PARTS {
            assert!(!s.contains(part), "{part:?} in the daemon's {name}:\n{s}");
        }
    }
    // What it printed: the offer on stderr, the summary with the file's short hash, the
    // refusal.
    assert!(stderr.contains("offer from clinic"), "{stderr}");
    assert!(
        stderr.contains("connection failed (refused): ") && stderr.contains(" #"),
        "{stderr}"
    );
    assert!(
        // (It said "1 files" before issue #20.)
        stdout.contains("received 1 file,") && stdout.contains("  #"),
        "{stdout}"
    );
    assert!(relay.stop().0.success());
}

/// Writes `n` records into `home`'s audit log through the library.
fn write_records(home: &Path, n: usize) {
    use phi_conduit::audit::{Audit, Options, Side};
    let home = phi_conduit::home::Home::at(home);
    let me = phi_conduit::crypto::identity::Identity::load(&home).unwrap();
    let book = phi_conduit::peers::AddressBook::load(&home).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = Audit::open(&home, &me, &book, Options::default()).session(Side::Receive);
        for i in 0..n {
            s.file_completed(
                &format!("f{i}"),
                i as u64,
                &phi_conduit::crypto::file_hash::FileHash::blake3(b"x"),
            )
            .await
            .unwrap();
        }
    });
}

fn verify_json(home: &Path, extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = conduit(home)
        .args(["audit", "verify", "--json"])
        .args(extra)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), v, text(&out.stderr))
}

#[test]
fn cutting_the_last_records_is_reported_with_its_own_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    assert!(conduit(&home).arg("keygen").status().unwrap().success());
    write_records(&home, 6);
    let (code, v, _) = verify_json(&home, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(v["valid"]["records"], 7);
    let head = v["valid"]["head"].as_str().unwrap().to_string();

    // Cut the last two records: the chain that is left is valid on its own...
    let log = home.join("audit").join("audit-000001.jsonl");
    let full = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    let cut = lines[..lines.len() - 2].join("\n") + "\n";
    std::fs::write(&log, &cut).unwrap();
    let (code, _, _) = verify_json(&home, &[]);
    assert_eq!(code, Some(0), "a plain verify cannot see the cut");
    // ...but does not reach the head kept elsewhere, nor the count.
    let (code, v, err) = verify_json(&home, &["--expect-head", &head]);
    assert_eq!(code, Some(6), "{err}");
    assert_eq!(v["ok"], false);
    assert!(err.contains("cut short") && err.contains(&head), "{err}");
    let (code, _, err) = verify_json(&home, &["--expect-records", "7"]);
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("records 5 to 6 are missing"), "{err}");
    // The head of an earlier record is still reached, the count of what is left too.
    let earlier: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
    let earlier = earlier["mac"].as_str().unwrap();
    let (code, v, err) = verify_json(&home, &["--expect-head", earlier, "--expect-records", "5"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["expected_head_at"], 3);

    // Put back, the right head passes; a bad head text is a usage error.
    std::fs::write(&log, &full).unwrap();
    let (code, _, err) = verify_json(&home, &["--expect-head", &head]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = verify_json(&home, &["--expect-head", "abc"]);
    assert_eq!(code, Some(2));
    // A broken chain is still exit code 4.
    std::fs::write(&log, full.replacen("\"f1\"", "\"g1\"", 1)).unwrap();
    let (code, _, _) = verify_json(&home, &["--expect-head", &head]);
    assert_eq!(code, Some(4));
}

#[test]
fn files_others_could_write_are_refused_naming_the_file_and_the_fix() {
    let p = pair_knowing(false, true);
    let home = &p.receiver;
    let peers = home.join("peers.toml");
    let config = home.join("conduit.toml");
    let key = home.join("identity").join("secret.key");
    std::fs::write(&config, "[audit]\nnames = \"hash\"\n").unwrap();
    mode(&config, 0o600);
    mode(&peers, 0o600);
    let ok = |args: &[&str]| conduit(home).args(args).output().unwrap();
    assert!(ok(&["peers", "list"]).status.success());
    assert!(ok(&["config", "show"]).status.success());
    assert!(ok(&["id"]).status.success());

    let refused = |file: &Path, m: u32, args: &[&str], fix: &str| {
        let before = std::fs::metadata(file).unwrap().mode() & 0o7777;
        mode(file, m);
        let out = ok(args);
        mode(file, before);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} with {m:o}: {err}");
        assert!(
            err.contains(&file.display().to_string()) && err.contains(fix),
            "{args:?} with {m:o}: {err}"
        );
    };
    refused(&peers, 0o620, &["peers", "list"], "chmod 600");
    refused(
        &peers,
        0o602,
        &["receive", "--listen", "127.0.0.1:0"],
        "chmod 600",
    );
    refused(&config, 0o660, &["config", "show"], "chmod 600");
    refused(
        &config,
        0o646,
        &["receive", "--listen", "127.0.0.1:0"],
        "chmod 600",
    );
    refused(&key, 0o620, &["id"], "chmod 600");
    refused(&key, 0o620, &["audit", "verify"], "chmod 600");
    // The home itself, writable by the group: whoever can write it can replace the files.
    refused(home, 0o770, &["peers", "list"], "chmod 700");
    refused(&home.join("identity"), 0o722, &["id"], "chmod 700");
    // The user's home directory above the conduit home, when the conduit home is in it.
    let user_home = p.root.clone();
    let with_home = |m: u32| {
        mode(&user_home, m);
        let out = conduit(home)
            .env("HOME", &user_home)
            .args(["peers", "list"])
            .output()
            .unwrap();
        mode(&user_home, 0o700);
        out
    };
    let out = with_home(0o775);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("chmod 700 {}", user_home.display())),
        "{err}"
    );
    assert!(with_home(0o755).status.success());
    // Restored, everything loads again.
    assert!(ok(&["peers", "list"]).status.success());
    assert!(ok(&["id"]).status.success());
}

#[test]
fn files_owned_by_another_user_are_refused() {
    // Needs root to give a file away; elsewhere the mode checks above stand.
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("SKIP: not root, cannot chown a file to another user");
        return;
    }
    let p = pair_knowing(false, true);
    let peers = p.receiver.join("peers.toml");
    std::os::unix::fs::chown(&peers, Some(65534), None).unwrap();
    let out = conduit(&p.receiver)
        .args(["peers", "list"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("owned by uid 65534") && err.contains(&peers.display().to_string()),
        "{err}"
    );
}

#[test]
fn debug_of_key_material_shows_no_key_bytes() {
    use phi_conduit::crypto::aead::AeadKey;
    use phi_conduit::crypto::identity::Identity;
    use phi_conduit::crypto::pake::{Code, Pake};
    use phi_conduit::crypto::stream::{FileKey, TransferKey};

    let secret = [0xa7u8; 32];
    let forbidden = |bytes: &[u8]| -> Vec<String> {
        vec![
            hex::encode(bytes),
            hex::encode_upper(bytes),
            format!("{bytes:?}"),
        ]
    };
    let check = |what: &str, shown: String, bytes: &[u8]| {
        for f in forbidden(bytes) {
            assert!(!shown.contains(&f), "{what}: {shown:?} holds {f:?}");
        }
    };
    let id = Identity::from_secret(secret).unwrap();
    check("Identity", format!("{id:?} {id:#?}"), &secret);
    let stored = id.secret_bytes();
    check("Identity", format!("{id:?}"), stored.as_ref());
    check(
        "FileKey",
        format!("{:?}", FileKey::from_bytes(&secret)),
        &secret,
    );
    check("AeadKey", format!("{:?}", AeadKey::new(&secret)), &secret);
    let tk = TransferKey::derive(&[1u8; 32], &secret);
    check("TransferKey", format!("{tk:?} {tk:#?}"), &secret);
    let ctx = phi_conduit::crypto::stream::FileKeyContext::fresh(
        [1u8; 16],
        0,
        phi_conduit::crypto::stream::DEFAULT_CHUNK_SIZE,
    );
    let fk = tk.file_key(&ctx);
    check("FileKey", format!("{fk:?} {ctx:?}"), fk.as_bytes());
    let chain = phi_conduit::audit::record::ChainKey::derive(&secret, b"label");
    check("ChainKey", format!("{chain:?}"), &secret);
    let code = Code::generate().unwrap();
    let words = code.to_string();
    let (pake, _) = Pake::start(&code, [3u8; 32]);
    let shown = format!("{code:?} {pake:?}");
    for word in words.split('-').skip(1) {
        assert!(!shown.contains(word), "{shown} holds the code word {word}");
    }
}

#[test]
fn a_running_receive_is_not_dumpable() {
    // Non-dumpable, a process's /proc/PID files belong to root instead of its user. Root's
    // processes belong to root anyway, so as root the receiver runs as nobody.
    let tmp = tempfile::tempdir().unwrap();
    mode(tmp.path(), 0o755);
    let home = tmp.path().join("home");
    assert!(conduit(&home).arg("keygen").status().unwrap().success());
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let root = rustix::process::geteuid().as_raw() == 0;
    let mut cmd = conduit(&home);
    cmd.args(["receive", "--json", "--listen", "127.0.0.1:0", "--out"])
        .arg(&out);
    if root {
        for entry in walk(&home).into_iter().chain([out.clone()]) {
            std::os::unix::fs::chown(&entry, Some(65534), Some(65534)).unwrap();
        }
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    }
    let mut rx = Running::spawn(cmd);
    assert_eq!(rx.first["event"], "listening", "{}", rx.first);
    let pid = rx.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    assert_ne!(uid, 0, "the receiver must run as a user for this check");
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid();
    rx.signal(libc::SIGTERM);
    let _ = rx.finish();
    assert_eq!(
        owner, 0,
        "/proc/{pid}/status belongs to uid {owner}: the process is dumpable"
    );
}

/// `dir` and everything under it.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    if dir.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            all.extend(walk(&e.unwrap().path()));
        }
    }
    all
}

#[test]
fn a_partial_file_not_adopted_is_reported_without_its_name() {
    use phi_conduit::crypto::identity::PublicKey;
    use phi_conduit::transfer::paths::RelPath;
    use phi_conduit::transfer::resume::Sidecar;
    let p = pair_knowing(true, true);
    let name = "Doe, Jane MRN12345.pdf";
    let src = p.root.join(name);
    write_data(&src, 3 << 20);
    // What an interrupted transfer leaves, with a partial file that is not private
    // (0644): it is left alone and reported.
    let out = p.root.join("inbox");
    std::fs::create_dir_all(&out).unwrap();
    mode(&out, 0o700);
    let key = PublicKey::parse(&common::key_of(&p.sender)).unwrap();
    let part_name = ".conduit-0123456789abcdef0123456789abcdef.part";
    std::fs::write(out.join(part_name), vec![0u8; 1 << 20]).unwrap();
    mode(&out.join(part_name), 0o644);
    let meta = std::fs::metadata(&src).unwrap();
    let sidecar = serde_json::json!({
        "v": 2, "sender": key.to_string(), "path": name, "part": part_name,
        "size": meta.len(), "mtime": meta.mtime(), "chunk_size": 256 << 10,
        "durable_chunks": 4,
    });
    let sc = out.join(Sidecar::name_for(&key, &RelPath::parse(name).unwrap()));
    std::fs::write(&sc, sidecar.to_string()).unwrap();
    mode(&sc, 0o600);

    let mut cmd = conduit(&p.receiver);
    cmd.args([
        "receive",
        "--json",
        "--audit-names",
        "hash",
        "--listen",
        "127.0.0.1:0",
    ])
    .arg("--out")
    .arg(&out);
    let mut rx = Running::spawn(cmd);
    let addr = rx.first["addr"].as_str().unwrap().to_string();
    let sent = conduit(&p.sender)
        .arg("send")
        .arg(&src)
        .args([
            "--json",
            "--to",
            "lab",
            "--direct",
            &addr,
            "--audit-names",
            "hash",
        ])
        .output()
        .unwrap();
    let (status, stdout, stderr) = rx.finish();
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(status.success(), "{stderr}");
    let evs = events(&stdout);
    let warning = evs
        .iter()
        .find(|e| e["event"] == "warning")
        .unwrap_or_else(|| panic!("no warning in {evs:?}"));
    assert!(
        warning["message"].as_str().unwrap().contains("not adopted"),
        "{warning}"
    );
    // The path as the other events show it: the audit's 64-hex-digit name hash.
    let path = warning["path"].as_str().unwrap();
    assert!(
        path.len() == 64 && path.bytes().all(|b| b.is_ascii_hexdigit()),
        "{warning}"
    );
    let file_done = evs.iter().find(|e| e["event"] == "file_done").unwrap();
    assert_eq!(file_done["path"].as_str(), Some(path));
    for stream in [&stdout, &stderr] {
        for part in NAME_PARTS {
            assert!(!stream.contains(part), "{part:?} in {stream}");
        }
    }
}

#[test]
fn a_sender_s_walk_error_deep_in_a_folder_shows_no_name_in_hash_mode() {
    let p = pair_knowing(true, true);
    let study = p.root.join("study");
    let inner = study.join("Doe, Jane");
    std::fs::create_dir_all(&inner).unwrap();
    write_data(&inner.join("MRN12345 scan.dcm"), 100);
    let fifo = inner.join("Smith labs.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let sent = conduit(&p.sender)
        .current_dir(&p.root)
        .args(["send", "study", "--to", "lab", "--direct", "127.0.0.1:9"])
        .args(["--audit-names", "hash"])
        .output()
        .unwrap();
    let stderr = text(&sent.stderr);
    assert!(!sent.status.success(), "{stderr}");
    assert!(
        stderr.contains("is not a regular file") && stderr.contains('#'),
        "{stderr}"
    );
    for part in NAME_PARTS {
        assert!(!stderr.contains(part), "{part:?} in {stderr}");
    }
    // Names shown (the default of a one-shot send): the error says which file.
    let sent = conduit(&p.sender)
        .current_dir(&p.root)
        .args(["send", "study", "--to", "lab", "--direct", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(
        text(&sent.stderr).contains("Smith labs.fifo"),
        "{}",
        text(&sent.stderr)
    );
}
