//! The relay in conduit mode with real processes on loopback: `conduit relay`, and
//! `conduit send` / `conduit receive` meeting there.

use crate::common;

use std::process::Output;

use common::{
    Relay, Running, blake3_file, conduit, events, pair_knowing, receiver_via, same_file, scratch,
    send_via, start_relay, start_relay_at, text, wait_for_durable, write_data, write_large,
};

#[test]
fn a_file_goes_through_the_relay_and_the_relay_logs_no_names() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&[]);
    let src = p.root.join("Patient-Smith-Jane.bin");
    write_data(&src, 3_000_000);
    let out = p.root.join("out");
    let mut rx = receiver_via(&p, &relay, &out, &[]);
    let sent = send_via(&p, &relay, &[&src], &["--to", "lab"]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let (status, rx_out, rx_err) = rx.finish();
    assert!(status.success(), "{rx_err}");
    assert!(same_file(&src, &out.join("Patient-Smith-Jane.bin")));
    let done = events(&rx_out)
        .into_iter()
        .find(|e| e["event"] == "done")
        .unwrap();
    assert_eq!(done["bytes"], 3_000_000);

    let (status, log, err) = relay.stop();
    assert!(status.success(), "relay exit: {status:?} {err}");
    let closed: Vec<_> = log
        .iter()
        .filter(|e| e["event"] == "session_closed")
        .collect();
    assert_eq!(closed.len(), 1, "{log:?}");
    let moved = closed[0]["bytes_connector_to_listener"].as_u64().unwrap();
    assert!(
        moved > 3_000_000,
        "ciphertext is larger than plaintext: {moved}"
    );
    assert_eq!(closed[0]["close_code"], 0);
    // Conduit rule: no file name, no per-file size in the relay's output.
    let all = format!("{log:?}{err}");
    assert!(
        !all.contains("Smith"),
        "a file name reached the relay's log"
    );
    assert!(
        !all.contains("3000000"),
        "a per-file size reached the relay's log"
    );
}

#[test]
fn a_code_phrase_transfer_through_the_relay_burns_the_nameplate() {
    let p = pair_knowing(false, false);
    let relay = start_relay(&[]);
    let src = p.root.join("note.txt");
    std::fs::write(&src, "MARKER-PLAINTEXT ".repeat(1000)).unwrap();
    let mut cmd = relay.cmd(&p.sender, "send");
    cmd.args(["--code"]).arg(&src);
    let mut tx = Running::spawn(cmd);
    assert_eq!(tx.first["event"], "code");
    let code = tx.first["code"].as_str().unwrap().to_string();
    let out = p.root.join("out");
    let rx = relay
        .cmd(&p.receiver, "receive")
        .args(["--code", &code, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(rx.status.success(), "{}", text(&rx.stderr));
    let (status, _, err) = tx.finish();
    assert!(status.success(), "{err}");
    assert!(same_file(&src, &out.join("note.txt")));

    // The nameplate is burned: a third party with the same code is refused by the relay.
    let again = relay
        .cmd(&p.receiver, "receive")
        .args(["--code", &code, "--out"])
        .arg(p.root.join("out2"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("rendezvous already in use"),
        "{}",
        text(&again.stderr)
    );

    let (status, log, err) = relay.stop();
    assert!(status.success());
    let all = format!("{log:?}{err}");
    assert!(!all.contains("MARKER"));
    assert!(!all.contains(&code));
    assert!(!all.contains("note.txt"));
}

#[test]
fn a_wrong_pin_is_refused_before_anything_is_sent() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&[]);
    let src = p.root.join("a.txt");
    std::fs::write(&src, b"x").unwrap();
    let wrong = "00".repeat(32);
    let out = conduit(&p.sender)
        .arg("send")
        .arg(&src)
        .args(["--to", "lab", "--relay", &relay.addr, "--relay-pin", &wrong])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("does not match the pinned SHA-256"), "{err}");
    // The next step names the flag (the library's message does not).
    assert!(err.contains("check the relay pin (--relay-pin"), "{err}");
    let (status, log, _) = relay.stop();
    assert!(status.success());
    assert!(!log.iter().any(|e| e["event"] == "session_open"));
}

#[test]
fn the_relay_checks_access_tokens() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "# clinic A\n{}  -\n",
            hex::encode(sha2::Sha256::digest(b"open-sesame"))
        ),
    )
    .unwrap();
    let relay = start_relay(&["--tokens", tokens.to_str().unwrap()]);
    assert_eq!(relay.run.first["tokens_required"], true);
    let p = pair_knowing(true, true);
    let src = p.root.join("a.txt");
    std::fs::write(&src, b"token-gated").unwrap();
    let no_token = send_via(&p, &relay, &[&src], &["--to", "lab"]);
    assert_eq!(no_token.status.code(), Some(1));
    assert!(
        text(&no_token.stderr).contains("access token refused"),
        "{}",
        text(&no_token.stderr)
    );
    let bad = send_via(
        &p,
        &relay,
        &[&src],
        &["--to", "lab", "--relay-token", "guess"],
    );
    assert!(text(&bad.stderr).contains("access token refused"));

    let out = p.root.join("out");
    let mut cmd = conduit(&p.receiver);
    cmd.args([
        "receive",
        "--json",
        "--relay",
        &relay.addr,
        "--relay-pin",
        &relay.pin,
        "--path",
        "relay",
        "--out",
    ])
    .arg(&out)
    .env("CONDUIT_RELAY_TOKEN", "open-sesame");
    let mut rx = Running::spawn(cmd);
    let ok = send_via(
        &p,
        &relay,
        &[&src],
        &["--to", "lab", "--relay-token", "open-sesame"],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(rx.finish().0.success());
    assert!(same_file(&src, &out.join("a.txt")));
    let (_, log, _) = relay.stop();
    let refused = log
        .iter()
        .filter(|e| e["event"] == "refused" && e["reason"] == "token")
        .count();
    assert_eq!(refused, 2);
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_and_health_are_served() {
    let relay = start_relay(&["--metrics", "127.0.0.1:0"]);
    let m = relay.run.first["metrics"].as_str().unwrap().to_string();
    assert!(http_get(&m, "/healthz").starts_with("HTTP/1.1 200"));
    let p = pair_knowing(true, true);
    let src = p.root.join("a.bin");
    write_data(&src, 500_000);
    let out = p.root.join("out");
    let mut rx = receiver_via(&p, &relay, &out, &[]);
    let sent = send_via(&p, &relay, &[&src], &["--to", "lab"]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(rx.finish().0.success());
    // The session's close is processed right after the endpoints finish.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = http_get(&m, "/metrics");
        if metrics.contains("conduit_relay_sessions_active 0")
            && metrics.contains("conduit_relay_sessions_total 1")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        metrics.contains("conduit_relay_sessions_total 1"),
        "{metrics}"
    );
    let relayed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("conduit_relay_bytes_relayed_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(relayed > 500_000, "{relayed}");
    assert!(metrics.contains("conduit_relay_pairing_wait_seconds_count 1"));
    assert!(metrics.contains("conduit_relay_rejections_total{reason=\"token\"} 0"));
    assert!(relay.stop().0.success());
}

#[test]
fn sigterm_sends_waiting_clients_away_and_exits_zero() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&[]);
    let mut rx = receiver_via(&p, &relay, &p.root.join("out"), &[]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (status, log, _) = relay.stop();
    assert!(status.success());
    assert!(log.iter().any(|e| e["event"] == "stopped"));
    let (status, _, err) = rx.finish();
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("shutting down"), "{err}");
}

#[test]
fn a_lonely_client_gets_the_pairing_timeout() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&["--pairing-timeout", "1"]);
    let mut rx = receiver_via(&p, &relay, &p.root.join("out"), &[]);
    let (status, _, err) = rx.finish();
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("no peer came within the pairing timeout"),
        "{err}"
    );
    let (_, log, _) = relay.stop();
    assert!(log.iter().any(|e| e["reason"] == "pairing_timeout"));
}

#[test]
fn the_daemon_receives_several_transfers_at_once_and_stops_on_sigterm() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&[]);
    let out = p.root.join("inbox");
    let mut cmd = conduit(&p.receiver);
    cmd.args([
        "receive",
        "--json",
        "--daemon",
        "--concurrent",
        "2",
        "--relay",
        &relay.addr,
        "--relay-pin",
        &relay.pin,
        "--path",
        "relay",
        "--out",
    ])
    .arg(&out);
    let mut daemon = Running::spawn(cmd);
    assert_eq!(daemon.first["event"], "daemon");
    let files: Vec<_> = (0..3)
        .map(|i| {
            let f = p.root.join(format!("f{i}.bin"));
            write_data(&f, 200_000 + i * 1000);
            f
        })
        .collect();
    // Two at once, then one more.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| send_via(&p, &relay, &[&files[0]], &["--to", "lab"]));
        let b = s.spawn(|| send_via(&p, &relay, &[&files[1]], &["--to", "lab"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert!(b.status.success(), "{}", text(&b.stderr));
    let c = send_via(&p, &relay, &[&files[2]], &["--to", "lab"]);
    assert!(c.status.success(), "{}", text(&c.stderr));
    for (i, f) in files.iter().enumerate() {
        assert!(same_file(f, &out.join(format!("f{i}.bin"))));
    }
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_timeout(10).is_some(), "the daemon did not stop");
    let (status, stdout, _) = daemon.finish();
    assert!(status.success());
    assert_eq!(
        events(&stdout)
            .iter()
            .filter(|e| e["event"] == "done")
            .count(),
        3
    );
    assert!(relay.stop().0.success());
}

/// `write_bytes` of a process (bytes it caused to be written to storage).
fn write_bytes(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

/// Peak resident set of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

#[test]
fn one_gib_through_the_relay_writes_nothing_to_disk_and_stays_under_64_mib() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&[]);
    let src = p.root.join("one-gib.bin");
    write_large(&src, 1 << 30);
    let pid = relay.run.child.id();
    let before = write_bytes(pid);
    let out = p.root.join("out");
    let mut rx = receiver_via(&p, &relay, &out, &[]);
    let sent = send_via(&p, &relay, &[&src], &["--to", "lab"]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(rx.finish().0.success());
    assert_eq!(blake3_file(&src), blake3_file(&out.join("one-gib.bin")));
    match (before, write_bytes(pid)) {
        (Some(b), Some(a)) => assert_eq!(a, b, "the relay wrote {} bytes to disk", a - b),
        _ => eprintln!("SKIP write_bytes check: /proc/PID/io is not readable here"),
    }
    let rss = peak_rss(pid);
    eprintln!("relay peak RSS with 1 GiB: {} KiB", rss / 1024);
    assert!(rss <= 64 << 20, "relay peak RSS {rss} bytes");
    assert!(relay.stop().0.success());
}

#[test]
fn fifty_concurrent_transfers_stay_within_the_documented_memory_bound() {
    const N: usize = 50;
    let p = pair_knowing(true, true);
    // Every sender and the daemon are at 127.0.0.1, one source: as 50 senders behind
    // one NAT address would be, they need a relay that allows 50 sessions per source.
    let relay = start_relay(&["--max-sessions-per-source", "64"]);
    let out = p.root.join("inbox");
    let mut cmd = conduit(&p.receiver);
    cmd.args([
        "receive",
        "--json",
        "--daemon",
        "--concurrent",
        "50",
        "--relay",
        &relay.addr,
        "--relay-pin",
        &relay.pin,
        "--path",
        "relay",
        "--out",
    ])
    .arg(&out);
    let mut daemon = Running::spawn(cmd);
    let files: Vec<_> = (0..N)
        .map(|i| {
            let f = p.root.join(format!("c{i:02}.bin"));
            write_data(&f, 1_000_000 + i);
            f
        })
        .collect();
    let outputs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| s.spawn(|| send_via(&p, &relay, &[f], &["--to", "lab", "--relay-wait", "60"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &outputs {
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    for (i, f) in files.iter().enumerate() {
        assert!(same_file(f, &out.join(format!("c{i:02}.bin"))));
    }
    let rss = peak_rss(relay.run.child.id());
    // docs/PROTOCOL.md, "Relay limits and memory": 24 MiB of payload per session at most,
    // on top of the process itself (well under 32 MiB).
    let bound = (32u64 << 20) + N as u64 * (24 << 20);
    eprintln!(
        "relay peak RSS with {N} transfers: {} KiB (bound {} KiB)",
        rss / 1024,
        bound / 1024
    );
    assert!(rss <= bound);
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_timeout(10).is_some());
    let (_, log, _) = relay.stop();
    let sessions = log
        .iter()
        .filter(|e| e["event"] == "session_closed")
        .count();
    assert_eq!(sessions, N);
}

#[test]
fn a_third_connector_is_refused() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&[]);
    let src = p.root.join("a.txt");
    std::fs::write(&src, b"first").unwrap();
    let mut rx = receiver_via(&p, &relay, &p.root.join("out"), &[]);
    let first = send_via(&p, &relay, &[&src], &["--to", "lab"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(rx.finish().0.success());
    let third = send_via(&p, &relay, &[&src], &["--to", "lab", "--relay-wait", "0"]);
    assert_eq!(third.status.code(), Some(1));
    assert!(
        text(&third.stderr).contains("no peer is waiting at the relay"),
        "{}",
        text(&third.stderr)
    );
    let (_, log, _) = relay.stop();
    assert!(log.iter().any(|e| e["reason"] == "no_listener"));
    assert_eq!(
        log.iter().filter(|e| e["event"] == "session_open").count(),
        1
    );
}

#[test]
fn the_idle_timeout_fires() {
    let p = pair_knowing(true, true);
    // Clients send keep-alives every 5 s; a 1 s idle timeout closes a waiting one.
    let relay = start_relay(&["--idle-timeout", "1"]);
    let mut rx = receiver_via(&p, &relay, &p.root.join("out"), &[]);
    assert!(
        rx.wait_timeout(20).is_some(),
        "the idle timeout did not fire"
    );
    let (status, _, err) = rx.finish();
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("timed out"), "{err}");
    assert!(relay.stop().0.success());
}

#[test]
fn the_relay_killed_mid_transfer_fails_both_ends_and_a_rerun_resumes() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&["--idle-timeout", "2"]);
    let addr = relay.addr.clone();
    let src = p.root.join("big.bin");
    write_large(&src, 400 << 20);
    let out = p.root.join("out");
    let mut rx = receiver_via(&p, &relay, &out, &[]);
    let mut cmd = conduit(&p.sender);
    cmd.arg("send").arg(&src).args([
        "--json",
        "--to",
        "lab",
        "--relay",
        &relay.addr,
        "--relay-pin",
        &relay.pin,
        "--path",
        "relay",
    ]);
    let mut tx = Running::spawn(cmd);
    wait_for_durable(&out, "big.bin", 16 << 20);
    let Relay { mut run, .. } = relay;
    run.signal(libc::SIGKILL);
    let _ = run.finish();
    for (who, proc_) in [("sender", &mut tx), ("receiver", &mut rx)] {
        assert!(proc_.wait_timeout(30).is_some(), "the {who} did not notice");
        let (status, _, err) = proc_.finish();
        assert!(!status.success(), "the {who} reported success");
        assert!(err.contains("timed out"), "{who}: {err}");
    }
    assert!(
        !out.join("big.bin").exists(),
        "a partial file got its final name"
    );

    // The relay comes back where it was (with a new certificate); the same commands
    // continue the file.
    let relay = start_relay_at(&addr, &[]);
    let mut rx = receiver_via(&p, &relay, &out, &[]);
    let sent = send_via(&p, &relay, &[&src], &["--to", "lab"]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let (status, stdout, err) = rx.finish();
    assert!(status.success(), "{err}");
    let done = events(&stdout)
        .into_iter()
        .find(|e| e["event"] == "done")
        .unwrap();
    assert!(
        done["resumed_bytes"].as_u64().unwrap() >= 16 << 20,
        "{done}"
    );
    assert_eq!(blake3_file(&src), blake3_file(&out.join("big.bin")));
    assert!(relay.stop().0.success());
}

#[test]
fn sigterm_lets_a_running_session_finish_then_exits_zero() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&["--drain-timeout", "60"]);
    let src = p.root.join("big.bin");
    write_large(&src, 160 << 20);
    let out = p.root.join("out");
    let mut rx = receiver_via(&p, &relay, &out, &[]);
    let mut cmd = relay.cmd(&p.sender, "send");
    cmd.arg(&src).args(["--to", "lab"]);
    let mut tx = Running::spawn(cmd);
    wait_for_durable(&out, "big.bin", 8 << 20);
    relay.run.signal(libc::SIGTERM);
    let (status, _, err) = tx.finish();
    assert!(status.success(), "the transfer was cut by the drain: {err}");
    assert!(rx.finish().0.success());
    assert_eq!(blake3_file(&src), blake3_file(&out.join("big.bin")));
    let (status, log, _) = relay.stop();
    assert!(status.success());
    let drain = log.iter().find(|e| e["event"] == "draining").unwrap();
    assert_eq!(drain["sessions"], 1);
    assert_eq!(log.last().unwrap()["event"], "stopped");
    assert_eq!(log.last().unwrap()["sessions_cut"], 0);
}

#[test]
fn the_daemon_reconnects_when_the_relay_comes_back() {
    // A relay with a certificate from files, so that it comes back with the same pin.
    let dir = scratch();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("relay.pem"), dir.path().join("relay.key"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).unwrap();
    let start = |addr: &str| {
        let mut cmd = dir.conduit();
        // A short idle timeout, so the daemon notices the relay gone within seconds.
        cmd.args([
            "relay",
            "--listen",
            addr,
            "--json",
            "--idle-timeout",
            "3",
            "--cert",
        ])
        .arg(&cert_pem)
        .arg("--key")
        .arg(&key_pem);
        let r = Running::spawn(cmd);
        assert_eq!(r.first["event"], "listening", "{}", r.first);
        r
    };
    let mut relay = start("127.0.0.1:0");
    let addr = relay.first["addr"].as_str().unwrap().to_string();
    let pin = relay.first["cert_sha256"].as_str().unwrap().to_string();
    let p = pair_knowing(true, true);
    let out = p.root.join("inbox");
    let mut cmd = conduit(&p.receiver);
    cmd.args([
        "receive",
        "--json",
        "--daemon",
        "--relay",
        &addr,
        "--relay-pin",
        &pin,
        "--path",
        "relay",
        "--out",
    ])
    .arg(&out);
    let mut daemon = Running::spawn(cmd);
    std::thread::sleep(std::time::Duration::from_millis(500));
    relay.signal(libc::SIGKILL);
    let _ = relay.finish();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let relay = start(&addr);
    assert_eq!(relay.first["cert_sha256"].as_str().unwrap(), pin);
    let src = p.root.join("after.txt");
    std::fs::write(&src, b"sent after the relay came back").unwrap();
    let sent = conduit(&p.sender)
        .arg("send")
        .arg(&src)
        .args([
            "--to",
            "lab",
            "--relay",
            &addr,
            "--relay-pin",
            &pin,
            "--path",
            "relay",
            "--relay-wait",
            "60",
        ])
        .output()
        .unwrap();
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(same_file(&src, &out.join("after.txt")));
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_timeout(10).is_some());
    drop(relay);
}

/// Review finding (LOW) on issue 18: `--strike-window 18446744073709551615` panicked the
/// relay at its first strike (an expiry past what an `Instant` holds). Every duration
/// limit is capped at one day: a larger one is refused at start, naming the limit, and
/// the relay never gets to listen.
#[test]
fn a_duration_limit_past_a_day_is_refused_at_start() {
    let cwd = scratch();
    for flag in [
        "--strike-window",
        "--pairing-timeout",
        "--hello-timeout",
        "--drain-timeout",
    ] {
        let mut child = cwd
            .conduit()
            .args([
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--dev-self-signed",
                "--json",
            ])
            .args([flag, "18446744073709551615"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                let out = child.wait_with_output().unwrap();
                panic!("{flag}: the relay started: {}", text(&out.stdout));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{flag}");
        assert!(err.contains("at most 86400"), "{flag}: {err}");
        assert!(!err.contains("panicked"), "{flag}: {err}");
        assert!(!text(&out.stdout).contains("listening"), "{flag}");
    }
}

/// A relay whose log reader goes away (its stdout a pipe that is closed after the first
/// line, as when whatever read the log died) keeps serving: the log lines are lost, the
/// transfer through it completes, and it stops cleanly on SIGTERM. (It used to die at its
/// next log line.)
#[test]
fn the_relay_outlives_the_reader_of_its_log() {
    let cwd = scratch();
    let mut cmd = std::process::Command::new("bash");
    // The relay itself is the child (exec), its stdout a pipe to `head -n 1`, which
    // passes the first line on and exits.
    cmd.current_dir(cwd.path())
        .env("HOME", cwd.path())
        .env_remove("CONDUIT_HOME")
        .arg("-c")
        .arg(format!(
            "exec {} relay --listen 127.0.0.1:0 --dev-self-signed --json --verbose > >(head -n 1)",
            env!("CARGO_BIN_EXE_conduit")
        ));
    let relay = Relay::spawned(cmd, cwd);
    // `head` is gone once our reader sees the end of its output.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let p = pair_knowing(true, true);
    let src = p.root.join("a.bin");
    write_data(&src, 1_000_000);
    let out = p.root.join("out");
    let mut rx = receiver_via(&p, &relay, &out, &[]);
    let sent = send_via(&p, &relay, &[&src], &["--to", "lab"]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(rx.finish().0.success());
    assert!(same_file(&src, &out.join("a.bin")));
    // A second transfer: the relay is still there after logging into the closed pipe.
    let mut rx = receiver_via(&p, &relay, &p.root.join("out2"), &[]);
    let sent = send_via(&p, &relay, &[&src], &["--to", "lab"]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(rx.finish().0.success());
    let (status, log, err) = relay.stop();
    assert!(status.success(), "{status:?} {err}");
    assert!(log.is_empty(), "{log:?}");
}
