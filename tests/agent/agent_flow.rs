//! Deliveries between agents: while the receiver is off, to two recipients, a slowly
//! written file, SIGKILL of the sender, a repeated item.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{self, Running, conduit, key_of, text};

/// A new endpoint home `name` under `root`.
pub fn endpoint(root: &Path, name: &str) -> PathBuf {
    let home = root.join(name);
    let out = conduit(&home).arg("keygen").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    home
}

/// `home` pins `other`'s key as `name`.
pub fn know(home: &Path, name: &str, other: &Path) {
    let out = conduit(home)
        .args(["peers", "add", name, &key_of(other)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Writes `home`'s conduit.toml.
pub fn configure(home: &Path, toml: &str) {
    std::fs::write(home.join("conduit.toml"), toml).unwrap();
}

/// `conduit agent --json` in `home`, once it reports `started`.
pub fn start_agent(home: &Path) -> Running {
    let mut cmd = conduit(home);
    cmd.args(["agent", "--json"]);
    let r = Running::spawn(cmd);
    assert_eq!(r.first["event"], "started", "{}", r.first);
    r
}

/// SIGTERM, then the exit status and the event lines.
pub fn stop_agent(mut r: Running) -> Vec<serde_json::Value> {
    r.signal(libc::SIGTERM);
    let (status, out, err) = r.finish();
    assert!(status.success(), "{status:?}: {err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some("stopped".into()),
        "{err}"
    );
    events
}

/// The regular files directly in `dir`, sorted (none if it does not exist).
pub fn files_in(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type()
                .ok()?
                .is_file()
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    v.sort();
    v
}

/// Waits up to `secs` for `cond`.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// A loopback UDP address free right now.
fn free_addr() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

/// Writes `n` files `r000.dat`... of different sizes into `dir` (through a temporary
/// name, as a lab system would), keeping a copy of each in `keep`.
fn drop_files(dir: &Path, keep: &Path, n: usize) {
    std::fs::create_dir_all(keep).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let name = format!("r{i:03}.dat");
        common::write_data(&keep.join(&name), 1000 + i * 37);
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::copy(keep.join(&name), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(&name)).unwrap();
    }
}

/// Every file of `want` arrived in `inbox` byte for byte, and nothing else (no second
/// copy under another name, nothing left in staging).
fn exactly(inbox: &Path, want: &Path) {
    let got = files_in(inbox);
    assert_eq!(got, files_in(want), "inbox {}", inbox.display());
    for name in &got {
        assert!(
            common::same_file(&inbox.join(name), &want.join(name)),
            "{name}"
        );
    }
    let staged = inbox.join(".conduit-agent");
    let leftovers: Vec<_> = walk(&staged);
    assert!(leftovers.is_empty(), "left in staging: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

fn status(home: &Path) -> serde_json::Value {
    let out = conduit(home)
        .args(["agent", "status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The bar "files dropped while the receiving agent is stopped arrive once after it
/// starts" and "two recipients each receive every file once; the source moves to sent/
/// only after both receipts", through a real relay. Smaller than the issue's bar to keep
/// CI fast: 20 files, the second clinic started 3 s after the first has them all (the
/// bar: 200 files, 30 s).
#[test]
fn two_clinics_one_offline_each_get_every_file_once_and_sent_waits_for_both() {
    let relay = common::start_relay(&[]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let lab = endpoint(root, "lab");
    let (a, b) = (endpoint(root, "clinic-a"), endpoint(root, "clinic-b"));
    know(&lab, "clinic-a", &a);
    know(&lab, "clinic-b", &b);
    know(&a, "lab", &lab);
    know(&b, "lab", &lab);
    let transfer = format!(
        "[transfer]\nrelay = \"{}\"\nrelay_pin = \"{}\"\n\n[agent]\nrescan_secs = 1\nretry_max_secs = 2\n",
        relay.addr, relay.pin
    );
    let outbox = root.join("outbox");
    configure(
        &lab,
        &format!(
            "{transfer}\n[[outbox]]\npath = \"{}\"\nto = [\"clinic-a\", \"clinic-b\"]\nafter = \"move\"\nstable_for_secs = 1\n",
            outbox.display()
        ),
    );
    let inbox = |home: &Path| home.join("inbox");
    for c in [&a, &b] {
        configure(
            c,
            &format!(
                "{transfer}\n[[inbox]]\nfrom = [\"lab\"]\npath = \"{}\"\non_conflict = \"rename\"\n",
                inbox(c).display()
            ),
        );
    }
    let sender = start_agent(&lab);
    let clinic_a = start_agent(&a);
    let keep = root.join("originals");
    drop_files(&outbox, &keep, 20);
    assert!(
        wait_until(60, || files_in(&inbox(&a)).len() == 20),
        "clinic-a has {:?}",
        files_in(&inbox(&a))
    );
    // clinic-b is off: nothing may have moved to sent/ yet.
    std::thread::sleep(Duration::from_secs(3));
    assert!(files_in(&outbox.join("sent")).is_empty());
    assert_eq!(files_in(&outbox).len(), 20);
    let clinic_b = start_agent(&b);
    assert!(
        wait_until(90, || files_in(&outbox.join("sent")).len() == 20),
        "sent/ has {:?}; clinic-b has {:?}",
        files_in(&outbox.join("sent")),
        files_in(&inbox(&b))
    );
    assert!(files_in(&outbox).is_empty());
    // A receiving agent records a delivery (and answers with its receipt) before it
    // gives the staged file its name in the inbox (docs/AGENT.md, "Exactly once"): the
    // sender's sent/ may be complete a moment before clinic-b's inbox is.
    wait_until(30, || files_in(&inbox(&b)).len() >= files_in(&keep).len());
    exactly(&inbox(&a), &keep);
    exactly(&inbox(&b), &keep);
    let s = status(&lab);
    assert_eq!(s["counts"]["delivered"], 40, "{s}");
    assert_eq!(s["counts"]["queued"], 0, "{s}");
    assert_eq!(status(&b)["counts"]["received"], 20);
    for r in [clinic_a, clinic_b] {
        let events = stop_agent(r);
        assert_eq!(
            events.iter().filter(|e| e["event"] == "received").count(),
            20
        );
    }
    let events = stop_agent(sender);
    assert!(
        events.iter().any(|e| e["event"] == "retry"),
        "clinic-b was retried"
    );
    // The queue holds no file name in names mode hash (the agent's default).
    for f in ["agent.db", "agent.db-wal"] {
        let db = std::fs::read(lab.join(f)).unwrap_or_default();
        assert!(!db.windows(8).any(|w| w == b"r000.dat"), "{f}");
    }
}

/// A direct pair on loopback: the clinic listens at `addr`, the lab's outbox sends there
/// by name (`localhost:PORT`, resolved at each attempt).
fn direct_pair(root: &Path, outbox_extra: &str) -> (PathBuf, PathBuf, PathBuf, String) {
    let lab = endpoint(root, "lab");
    let clinic = endpoint(root, "clinic");
    know(&lab, "clinic", &clinic);
    know(&clinic, "lab", &lab);
    let addr = free_addr();
    let outbox = root.join("outbox");
    let port = addr.rsplit(':').next().unwrap();
    configure(
        &lab,
        &format!(
            "[agent]\nrescan_secs = 1\nretry_max_secs = 1\nmetrics = \"127.0.0.1:0\"\n\n[[outbox]]\npath = \"{}\"\nto = [\"clinic\"]\ndirect = \"localhost:{port}\"\n{outbox_extra}\n",
            outbox.display()
        ),
    );
    configure(
        &clinic,
        &format!(
            "[agent]\nlisten = \"{addr}\"\n\n[[inbox]]\nfrom = [\"*\"]\npath = \"{}\"\n",
            clinic.join("inbox").display()
        ),
    );
    (lab, clinic, outbox, addr)
}

/// The bar "a file written slowly is not sent before it is complete": 1 KiB every 0.5 s
/// for 4 s (the bar: 10 s), stable_for_secs = 2.
#[test]
fn a_slowly_written_file_is_sent_only_once_complete() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (lab, clinic, outbox, _) = direct_pair(dir.path(), "stable_for_secs = 2");
    let receiver = start_agent(&clinic);
    let sender = start_agent(&lab);
    // One agent per home: a second one stops at once.
    let second = conduit(&lab).arg("agent").output().unwrap();
    assert!(!second.status.success());
    assert!(
        text(&second.stderr).contains("another conduit agent is running"),
        "{}",
        text(&second.stderr)
    );
    let path = outbox.join("slow.hl7");
    let mut f = std::fs::File::create(&path).unwrap();
    let inbox = clinic.join("inbox");
    for i in 0..8u8 {
        f.write_all(&[b'a' + i; 1024]).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(files_in(&inbox).is_empty(), "sent while being written");
    }
    drop(f);
    assert!(wait_until(30, || files_in(&inbox).len() == 1));
    assert_eq!(
        std::fs::read(inbox.join("slow.hl7")).unwrap().len(),
        8 * 1024
    );
    assert!(wait_until(10, || files_in(&outbox.join("sent")) == ["slow.hl7"]));
    let events = stop_agent(sender);
    assert_eq!(events.iter().filter(|e| e["event"] == "queued").count(), 1);
    stop_agent(receiver);
}

/// The bar "the sending agent is killed with SIGKILL three times at random moments and
/// restarted: all arrive, none twice": 30 files (the bar: 100).
#[test]
fn sigkill_of_the_sender_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, clinic, outbox, _) = direct_pair(dir.path(), "stable_for_secs = 0");
    let receiver = start_agent(&clinic);
    let keep = dir.path().join("originals");
    drop_files(&outbox, &keep, 30);
    let inbox = clinic.join("inbox");
    let mut seed = u64::from(std::process::id());
    for _ in 0..3 {
        let mut sender = start_agent(&lab);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(200 + (seed >> 33) % 2300));
        sender.child.kill().unwrap(); // SIGKILL
        sender.child.wait().unwrap();
    }
    let sender = start_agent(&lab);
    assert!(
        wait_until(60, || files_in(&outbox.join("sent")).len() == 30),
        "sent/ has {:?}, inbox {:?}",
        files_in(&outbox.join("sent")),
        files_in(&inbox)
    );
    exactly(&inbox, &keep);
    let s = status(&lab);
    assert_eq!(s["counts"]["delivered"], 30, "{s}");
    stop_agent(sender);
    stop_agent(receiver);
}

/// The bar "a receiving agent answers a repeated item with the original receipt, and the
/// inbox holds one copy": the sender's queue is set back to before it recorded the
/// receipt (as a crash right after the receiver committed would leave it).
#[test]
fn a_repeated_item_gets_the_original_receipt_and_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, clinic, outbox, _) = direct_pair(dir.path(), "stable_for_secs = 0");
    let receiver = start_agent(&clinic);
    let sender = start_agent(&lab);
    common::write_data(&outbox.join("result.pdf"), 5000);
    assert!(wait_until(30, || files_in(&outbox.join("sent")) == ["result.pdf"]));
    let first = stop_agent(sender);
    let delivered = |events: &[serde_json::Value]| {
        events
            .iter()
            .find(|e| e["event"] == "delivered")
            .cloned()
            .unwrap()
    };
    let one = delivered(&first);
    assert_eq!(one["repeat"], false);
    // Back to "sending, no receipt": the file in the outbox, its item queued again.
    std::fs::rename(outbox.join("sent/result.pdf"), outbox.join("result.pdf")).unwrap();
    {
        let db = rusqlite::Connection::open(lab.join("agent.db")).unwrap();
        db.execute_batch(
            "UPDATE items SET state = 'sending', receipt = NULL; UPDATE files SET state = 'pending';",
        )
        .unwrap();
    }
    let sender = start_agent(&lab);
    assert!(wait_until(30, || files_in(&outbox.join("sent")) == ["result.pdf"]));
    // The metrics endpoint counts it: one delivery, a repeat, no data sent. The file
    // reaches sent/ just before the item's record is closed: wait for the counts.
    let lines = [
        "conduit_agent_deliveries_total 1",
        "conduit_agent_repeats_total 1",
        "conduit_agent_bytes_sent_total 0",
        "conduit_agent_queue_depth 0",
    ];
    let metrics_addr = sender.first["metrics"].as_str().unwrap().to_string();
    wait_until(30, || {
        let m = get(&metrics_addr, "/metrics");
        lines.iter().all(|l| m.contains(l))
    });
    let metrics = get(&metrics_addr, "/metrics");
    for line in lines {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
    assert!(get(sender.first["metrics"].as_str().unwrap(), "/healthz").starts_with("HTTP/1.1 200"));
    let second = stop_agent(sender);
    let two = delivered(&second);
    assert_eq!(two["repeat"], true, "{two}");
    assert_eq!(two["item"], one["item"], "the same item id");
    assert_eq!(two["blake3"], one["blake3"], "the original receipt");
    assert_eq!(files_in(&clinic.join("inbox")), ["result.pdf"]);
    let events = stop_agent(receiver);
    let received: Vec<_> = events.iter().filter(|e| e["event"] == "received").collect();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[1]["repeat"], true);
}

/// An HTTP GET on loopback: the whole response.
fn get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
