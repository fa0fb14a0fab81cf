//! Peers that stall, fail to authenticate, vanish or guess the code, against the real
//! `conduit` binary over loopback QUIC (THREATS.md F7, F14; issue 18 items 1, 5, 9).

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{Pair, Running, conduit, events, key_of, pair_knowing, text};
use phi_conduit::transfer::CLOSE_TIMEOUT;

/// A direct receiver with `extra` flags; returns it and its address.
fn receiver(p: &Pair, out: &Path, extra: &[&str]) -> (Running, SocketAddr) {
    let mut cmd = conduit(&p.receiver);
    cmd.args(["receive", "--json", "--listen", "127.0.0.1:0", "--out"])
        .arg(out)
        .args(extra);
    let r = Running::spawn(cmd);
    assert_eq!(r.first["event"], "listening", "{}", r.first);
    let addr = r.first["addr"].as_str().unwrap().parse().unwrap();
    (r, addr)
}

fn send_from(home: &Path, addr: SocketAddr, file: &Path) -> Output {
    conduit(home)
        .arg("send")
        .arg(file)
        .args(["--to", "lab", "--direct", &addr.to_string(), "--json"])
        .output()
        .unwrap()
}

/// What a raw client does once connected.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Nothing at all.
    Silent,
    /// Opens the control stream and writes a frame that is no handshake message.
    Garbage,
}

/// A QUIC client that connects with the right ALPN and then behaves as told; returns how
/// the connection ended (waiting at most 60 s, a hang guard).
fn raw_client(
    addr: SocketAddr,
    behaviour: Behaviour,
) -> std::thread::JoinHandle<quinn::ConnectionError> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ep = phi_conduit::transport::direct_client(addr).unwrap();
            let conn = ep.connect(addr, "phi-conduit").unwrap().await.unwrap();
            let _streams = match behaviour {
                Behaviour::Silent => None,
                Behaviour::Garbage => {
                    let (mut tx, rx) = conn.open_bi().await.unwrap();
                    tx.write_all(&[0, 5, 0xff, 1, 2, 3, 4]).await.unwrap();
                    Some((tx, rx))
                }
            };
            tokio::time::timeout(Duration::from_secs(60), conn.closed())
                .await
                .expect("the receiver never dropped the connection")
        })
    })
}

fn closed_by_timeout(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == CLOSE_TIMEOUT.into())
}

#[test]
fn a_silent_client_is_dropped_after_the_handshake_timeout_while_the_daemon_serves_a_sender() {
    let p = pair_knowing(true, true);
    let inbox = p.root.join("inbox");
    let (mut daemon, addr) = receiver(
        &p,
        &inbox,
        &["--daemon", "--concurrent", "1", "--handshake-timeout", "3"],
    );
    // Connects, and says nothing.
    let silent = raw_client(addr, Behaviour::Silent);
    // Meanwhile a real sender is served.
    let f = p.root.join("visit.txt");
    std::fs::write(&f, b"synthetic visit note").unwrap();
    let sent = send_from(&p.sender, addr, &f);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert_eq!(
        std::fs::read(inbox.join("visit.txt")).unwrap(),
        b"synthetic visit note"
    );
    // The silent one is dropped with the timeout's close code (not the idle timeout: its
    // endpoint sends keep-alives).
    let ended = silent.join().unwrap();
    assert!(closed_by_timeout(&ended), "{ended:?}");
    daemon.signal(libc::SIGTERM);
    let (status, out, err) = daemon.finish();
    assert!(status.success(), "{err}");
    let ev = events(&out);
    assert!(ev.iter().any(|e| e["event"] == "done"), "{out}");
    assert!(
        ev.iter()
            .any(|e| e["event"] == "error" && e["kind"] == "timeout"),
        "{out}"
    );
}

#[test]
fn connections_over_the_per_ip_limit_are_refused_until_a_place_frees() {
    let p = pair_knowing(true, true);
    let inbox = p.root.join("inbox");
    let (mut rx, addr) = receiver(
        &p,
        &inbox,
        &["--max-per-ip", "1", "--handshake-timeout", "3"],
    );
    let f = p.root.join("note.txt");
    std::fs::write(&f, b"note").unwrap();
    // A silent client holds the one place of 127.0.0.1 ...
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let silent = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ep = phi_conduit::transport::direct_client(addr).unwrap();
            let conn = ep.connect(addr, "phi-conduit").unwrap().await.unwrap();
            held_tx.send(()).unwrap();
            tokio::time::timeout(Duration::from_secs(60), conn.closed())
                .await
                .expect("the receiver never dropped the connection")
        })
    });
    held_rx.recv().unwrap();
    // ... so a sender from there is refused before any handshake ...
    let refused = send_from(&p.sender, addr, &f);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("refused"),
        "{}",
        text(&refused.stderr)
    );
    // ... until the silent one is dropped.
    assert!(closed_by_timeout(&silent.join().unwrap()));
    let sent = send_from(&p.sender, addr, &f);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(rx.finish().0.success());
    assert_eq!(std::fs::read(inbox.join("note.txt")).unwrap(), b"note");
}

#[test]
fn a_one_shot_receiver_survives_failed_connections_and_then_receives_its_sender() {
    let p = pair_knowing(true, true);
    // A stranger who knows the receiver's key, but whom the receiver does not know.
    let stranger = p.root.join("home-x");
    assert!(
        conduit(&stranger)
            .arg("keygen")
            .output()
            .unwrap()
            .status
            .success()
    );
    let add = conduit(&stranger)
        .args(["peers", "add", "lab", &key_of(&p.receiver)])
        .output()
        .unwrap();
    assert!(add.status.success());
    let inbox = p.root.join("inbox");
    let (mut rx, addr) = receiver(&p, &inbox, &["--handshake-timeout", "3"]);
    let f = p.root.join("lab.csv");
    std::fs::write(&f, b"id,value\n1,2\n").unwrap();
    // 1. Garbage on the control stream.
    let garbage = raw_client(addr, Behaviour::Garbage);
    let ended = garbage.join().unwrap();
    assert!(
        matches!(ended, quinn::ConnectionError::ApplicationClosed(_)),
        "{ended:?}"
    );
    // 2. An unknown sender.
    let refused = send_from(&stranger, addr, &f);
    // Refused (exit 5, with the next step): the receiver does not know this sender.
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused.stderr));
    // 3. A connection that says nothing until the handshake timeout.
    let silent = raw_client(addr, Behaviour::Silent);
    assert!(closed_by_timeout(&silent.join().unwrap()));
    assert!(
        rx.child.try_wait().unwrap().is_none(),
        "the receiver gave up"
    );
    // 4. The real sender.
    let sent = send_from(&p.sender, addr, &f);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let (status, out, err) = rx.finish();
    assert!(status.success(), "{err}");
    assert_eq!(
        std::fs::read(inbox.join("lab.csv")).unwrap(),
        b"id,value\n1,2\n"
    );
    let kinds: Vec<String> = events(&out)
        .iter()
        .filter(|e| e["event"] == "error")
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["error", "auth_failed", "timeout"], "{out}");
}

#[test]
fn a_killed_sender_is_noticed_by_the_receiver_within_its_idle_timeout() {
    let p = pair_knowing(true, true);
    let inbox = p.root.join("inbox");
    let (mut rx, addr) = receiver(&p, &inbox, &["--idle-timeout", "2"]);
    // A sparse 1 GiB file: cheap to make, long enough to send.
    let f = p.root.join("big.img");
    std::fs::File::create(&f).unwrap().set_len(1 << 30).unwrap();
    let mut cmd = conduit(&p.sender);
    cmd.arg("send")
        .arg(&f)
        .args(["--to", "lab", "--direct", &addr.to_string(), "--json"]);
    let tx = Running::spawn(cmd);
    common::wait_for_durable(&inbox, "big.img", 1 << 20);
    tx.signal(libc::SIGKILL);
    // A hang guard well above the 2 s idle timeout and below the old 30 s one.
    let status = rx.wait_timeout(20).expect("the receiver never noticed");
    assert!(!status.success());
    let (_, _, err) = rx.finish();
    assert!(err.contains("timed out"), "{err}");
    assert!(
        !inbox.join("big.img").exists(),
        "a partial file got its name"
    );
}

/// A direct code transfer whose receiver types `guess` instead of the code (on standard
/// input, off the command line); returns both outputs.
fn code_transfer(p: &Pair, inbox: &Path, guess: impl Fn(&str) -> String) -> (Output, Output) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let f = p.root.join("scan.dcm");
    std::fs::write(&f, b"synthetic image").unwrap();
    let mut sender = conduit(&p.sender)
        .arg("send")
        .arg(&f)
        .args(["--code", "--direct", &addr, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(sender.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let code = v["code"].as_str().unwrap().to_string();
    let mut receiver = conduit(&p.receiver)
        .args(["receive", "--listen", &addr, "--code", "--out"])
        .arg(inbox)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = receiver.stdin.take().unwrap();
    writeln!(stdin, "{}", guess(&code)).unwrap();
    drop(stdin);
    let (s, r) = (
        sender.wait_with_output().unwrap(),
        receiver.wait_with_output().unwrap(),
    );
    for o in [&s, &r] {
        common::assert_no_rust_names("stderr", &text(&o.stderr));
        common::assert_no_rust_names("stdout", &text(&o.stdout));
    }
    (s, r)
}

#[test]
fn receive_code_without_a_value_reads_the_code_from_standard_input() {
    let p = pair_knowing(false, false);
    let inbox = p.root.join("inbox");
    let (s, r) = code_transfer(&p, &inbox, str::to_string);
    assert!(s.status.success(), "sender: {}", text(&s.stderr));
    assert!(r.status.success(), "receiver: {}", text(&r.stderr));
    assert_eq!(
        std::fs::read(inbox.join("scan.dcm")).unwrap(),
        b"synthetic image"
    );
}

#[test]
fn a_wrong_code_is_a_code_mismatch_on_both_sides_and_leaks_neither_static_key() {
    let p = pair_knowing(false, false);
    let inbox = p.root.join("inbox");
    let (s, r) = code_transfer(&p, &inbox, |c| {
        // Same nameplate, one word changed.
        let mut parts: Vec<String> = c.split('-').map(String::from).collect();
        parts[3] = if parts[3] == "zoo" {
            "abandon".into()
        } else {
            "zoo".into()
        };
        parts.join("-")
    });
    assert_eq!(s.status.code(), Some(3), "sender: {}", text(&s.stderr));
    assert_eq!(r.status.code(), Some(3), "receiver: {}", text(&r.stderr));
    for o in [&s, &r] {
        assert!(
            text(&o.stderr).contains("code mismatch"),
            "{}",
            text(&o.stderr)
        );
        // And what to do about it.
        assert!(
            text(&o.stderr).contains("check the code with the other side"),
            "{}",
            text(&o.stderr)
        );
    }
    let id = |home: &Path| {
        let out = conduit(home).args(["id", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        [
            v["public_key"].as_str().unwrap().to_string(),
            v["fingerprint"].as_str().unwrap().to_string(),
        ]
    };
    // What each side printed and recorded, against the other side's identity.
    let seen = [
        (&s, &p.sender, id(&p.receiver)),
        (&r, &p.receiver, id(&p.sender)),
    ];
    for (out, home, [key, fingerprint]) in seen {
        let everything = format!(
            "{}{}{}",
            text(&out.stdout),
            text(&out.stderr),
            common::audit_text(home)
        );
        assert!(!everything.contains(&key), "{everything}");
        assert!(!everything.contains(&fingerprint), "{everything}");
    }
    // The sender's record is an unauthenticated abort, not an authentication failure of
    // a named peer.
    let sender_log = common::audit_text(&p.sender);
    assert!(sender_log.contains("unauthenticated abort"), "{sender_log}");
    assert!(!inbox.join("scan.dcm").exists());
}
