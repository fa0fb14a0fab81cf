//! Addresses as people write them (issue #20): `--direct localhost:PORT`, `--direct
//! [::1]:PORT`, `--relay localhost:PORT`, `--listen [::]:PORT` taking IPv4 and IPv6
//! senders (as a one-shot receiver and as a direct daemon), the addresses a receiver on
//! all interfaces prints, and a name that does not resolve.

use crate::common;

use std::path::Path;

use common::{Pair, Running, conduit, events, pair_knowing, start_relay, text};

/// Whether this host has an IPv6 loopback to test with (a container may have none).
fn ipv6_loopback() -> bool {
    let ok = std::net::UdpSocket::bind("[::1]:0").is_ok();
    if !ok {
        eprintln!("SKIP (IPv6 part): this host has no IPv6 loopback ([::1] cannot be bound)");
    }
    ok
}

/// A direct receiver on `listen`, JSON events; returns it and the port it listens on.
fn listening(p: &Pair, out: &Path, listen: &str, extra: &[&str]) -> (Running, u16) {
    let mut cmd = conduit(&p.receiver);
    cmd.args(["receive", "--json", "--listen", listen, "--out"])
        .arg(out)
        .args(extra);
    let r = Running::spawn(cmd);
    assert_eq!(r.first["event"], "listening", "{}", r.first);
    let addr: std::net::SocketAddr = r.first["addr"].as_str().unwrap().parse().unwrap();
    (r, addr.port())
}

fn send_to(p: &Pair, addr: &str, file: &Path) -> std::process::Output {
    conduit(&p.sender)
        .arg("send")
        .arg(file)
        .args(["--to", "lab", "--direct", addr])
        .output()
        .unwrap()
}

#[test]
fn direct_to_localhost_and_to_the_ipv6_loopback() {
    let p = pair_knowing(true, true);
    let out = p.root.join("inbox");
    let file = p.root.join("note.txt");
    std::fs::write(&file, b"synthetic note").unwrap();
    // A name: every address of `localhost` is tried (it may give ::1 first, where
    // nothing listens here).
    let (mut rx, port) = listening(&p, &out, "127.0.0.1:0", &[]);
    let s = send_to(&p, &format!("localhost:{port}"), &file);
    assert!(s.status.success(), "{}", text(&s.stderr));
    let (status, _, err) = rx.finish();
    assert!(status.success(), "{err}");
    assert_eq!(
        std::fs::read(out.join("note.txt")).unwrap(),
        b"synthetic note"
    );
    if !ipv6_loopback() {
        return;
    }
    let (mut rx, port) = listening(&p, &out, "[::1]:0", &["--overwrite"]);
    assert_eq!(rx.first["addr"], format!("[::1]:{port}"));
    let s = send_to(&p, &format!("[::1]:{port}"), &file);
    assert!(s.status.success(), "{}", text(&s.stderr));
    let (status, _, err) = rx.finish();
    assert!(status.success(), "{err}");
}

#[test]
fn a_direct_daemon_on_all_addresses_serves_ipv4_and_ipv6_senders_and_says_where() {
    let p = pair_knowing(true, true);
    let out = p.root.join("inbox");
    let v6 = ipv6_loopback();
    let any = if v6 { "[::]:0" } else { "0.0.0.0:0" };
    let (mut daemon, port) = listening(&p, &out, any, &["--daemon"]);
    // Bound to every interface: it lists this host's addresses for the sender, never
    // the unspecified one.
    let addrs = daemon.first["addrs"].as_array().unwrap().clone();
    assert!(!addrs.is_empty(), "{}", daemon.first);
    for a in &addrs {
        let a: std::net::SocketAddr = a.as_str().unwrap().parse().unwrap();
        assert!(!a.ip().is_unspecified() && a.port() == port, "{a}");
    }
    let mut targets = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    if v6 {
        targets.push(format!("[::1]:{port}"));
    }
    for (i, to) in targets.iter().enumerate() {
        let file = p.root.join(format!("visit-{i}.txt"));
        std::fs::write(&file, to.as_bytes()).unwrap();
        let s = send_to(&p, to, &file);
        assert!(s.status.success(), "to {to}: {}", text(&s.stderr));
        assert_eq!(
            std::fs::read(out.join(format!("visit-{i}.txt"))).unwrap(),
            to.as_bytes()
        );
    }
    // A daemon keeps going until SIGTERM, then ends with 0.
    assert!(daemon.child.try_wait().unwrap().is_none());
    daemon.signal(libc::SIGTERM);
    let (status, stdout, err) = daemon.finish();
    assert!(status.success(), "{err}");
    let done = events(&stdout)
        .iter()
        .filter(|e| e["event"] == "done")
        .count();
    assert_eq!(done, targets.len(), "{stdout}");
}

#[test]
fn a_receiver_on_all_addresses_prints_where_to_send_and_the_command() {
    let p = pair_knowing(true, true);
    let mut cmd = conduit(&p.receiver);
    cmd.args(["receive", "--listen", "0.0.0.0:0", "--out"])
        .arg(p.root.join("inbox"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        lines.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines[0].starts_with("listening on 0.0.0.0:"), "{lines:?}");
    let port = lines[0].trim().rsplit(':').next().unwrap().to_string();
    assert!(
        lines[1].starts_with("senders can reach this receiver at (UDP): ")
            && !lines[1].contains("0.0.0.0")
            && lines[1].contains(&format!(":{port}")),
        "{lines:?}"
    );
    assert!(
        lines[2].contains("conduit send FILES --to NAME --direct ")
            && lines[2].contains(&format!(":{port}")),
        "{lines:?}"
    );
}

#[test]
fn a_name_that_does_not_resolve_is_a_clear_error() {
    let p = pair_knowing(true, true);
    let file = p.root.join("note.txt");
    std::fs::write(&file, b"x").unwrap();
    let s = send_to(&p, "no-such-host.invalid:7470", &file);
    assert_eq!(s.status.code(), Some(1), "{}", text(&s.stderr));
    let err = text(&s.stderr);
    assert!(
        err.contains("cannot resolve \"no-such-host.invalid\"") && err.contains("IP address"),
        "{err}"
    );
    let out = conduit(&p.receiver)
        .args(["receive", "--listen", "no-such-host.invalid:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot resolve"));
    // Without a port it is a usage error, before any lookup.
    let s = send_to(&p, "lab.example.org", &file);
    assert_eq!(s.status.code(), Some(2), "{}", text(&s.stderr));
    assert!(text(&s.stderr).contains("HOST:PORT"));
}

#[test]
fn a_relay_given_by_name_is_reached() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&[]);
    let port = relay.addr.rsplit(':').next().unwrap();
    let by_name = format!("localhost:{port}");
    let out = p.root.join("inbox");
    let mut cmd = conduit(&p.receiver);
    cmd.args([
        "receive",
        "--json",
        "--relay",
        &by_name,
        "--relay-pin",
        &relay.pin,
        "--out",
    ])
    .arg(&out);
    let mut rx = Running::spawn(cmd);
    assert_eq!(rx.first["event"], "joining", "{}", rx.first);
    let file = p.root.join("x.txt");
    std::fs::write(&file, b"via localhost").unwrap();
    let s = conduit(&p.sender)
        .arg("send")
        .arg(&file)
        .args([
            "--to",
            "lab",
            "--relay",
            &by_name,
            "--relay-pin",
            &relay.pin,
        ])
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", text(&s.stderr));
    let (status, _, err) = rx.finish();
    assert!(status.success(), "{err}");
    assert_eq!(std::fs::read(out.join("x.txt")).unwrap(), b"via localhost");
    relay.stop();
}
