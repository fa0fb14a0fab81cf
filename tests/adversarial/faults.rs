//! Faults with real processes: a lossy, slow path; read-only and full destinations;
//! thousands of idle connections and slow Hellos against the relay; code-phrase guesses.
//! Where this machine cannot make a fault (no permission to mount, no netem), the test
//! says so on stderr and skips that part; it never passes silently.

use crate::common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{
    Running, conduit, direct_receiver, mount_tmpfs, pair_knowing, receiver_via, same_file,
    send_via, start_relay, text, umount, write_data,
};

/// A destination that becomes read-only after the receiver started (a read-only one is
/// refused at start: tests/transfer/human_output.rs) is found again at the offer.
#[test]
fn a_read_only_destination_is_a_clear_error_and_nothing_lands() {
    let p = pair_knowing(true, true);
    let out = p.root.join("ro");
    if !mount_tmpfs(&out, "1m", "") {
        return;
    }
    let src = p.root.join("a.txt");
    std::fs::write(&src, b"read-only target").unwrap();
    let (mut rx, addr) = direct_receiver(&p, &out, &[]);
    // Remounted read-only while the receiver waits.
    let remounted = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(remounted.success());
    let sent = conduit(&p.sender)
        .arg("send")
        .arg(&src)
        .args(["--to", "lab", "--direct", &addr])
        .output()
        .unwrap();
    let (status, _, err) = rx.finish();
    umount(&out);
    assert!(!sent.status.success(), "the sender reported success");
    assert!(!status.success());
    assert!(err.to_lowercase().contains("read-only"), "{err}");
    assert!(err.contains("--out DIR"), "{err}");
    assert!(!out.join("a.txt").exists());
}

#[test]
fn a_full_destination_is_a_clear_error_and_nothing_lands() {
    let p = pair_knowing(true, true);
    let out = p.root.join("full");
    if !mount_tmpfs(&out, "1m", "") {
        return;
    }
    let src = p.root.join("big.bin");
    write_data(&src, 3_000_000);
    let (mut rx, addr) = direct_receiver(&p, &out, &[]);
    let sent = conduit(&p.sender)
        .arg("send")
        .arg(&src)
        .args(["--to", "lab", "--direct", &addr])
        .output()
        .unwrap();
    let (status, _, err) = rx.finish();
    let landed = out.join("big.bin").exists();
    umount(&out);
    assert!(!sent.status.success(), "the sender reported success");
    assert!(!status.success());
    assert!(err.contains("space"), "{err}");
    // Sizes for people, and what to do.
    assert!(err.contains("2.9 MiB needed"), "{err}");
    assert!(err.contains("--out DIR"), "{err}");
    assert!(!landed, "a partial file got its final name");
}

/// The reservation of a received file on a small tmpfs: the first segment at once, then
/// (tmpfs allocates page by page) the writer keeps a segment reserved ahead of itself;
/// a file that cannot fit is an error while the writer is still far from the end of
/// the space, before any byte that would not fit is written.
#[test]
fn a_reservation_that_runs_out_of_room_stops_the_writer_early() {
    use phi_conduit::transfer::reserve::{FIRST_SEGMENT, Reservation};
    let dir = tempfile::tempdir().unwrap();
    let (disk, tiny) = (dir.path().join("small"), dir.path().join("tiny"));
    if !mount_tmpfs(&disk, "30m", "") {
        return;
    }
    if !mount_tmpfs(&tiny, "4m", "") {
        umount(&disk);
        return;
    }
    let f = std::fs::File::create(disk.join("big.part")).unwrap();
    // Either refused at once (where the first segment was fast enough to reserve the
    // rest too), or refused to the writer as it moves.
    let failed = match Reservation::start(&f, 0, 60 << 20) {
        Err(e) => Some((0, e.kind())),
        Ok(mut r) => (0..60u64 << 20)
            .step_by(1 << 20)
            .find_map(|at| r.ahead_of(at).err().map(|e| (at, e.kind()))),
    };
    let g = std::fs::File::create(tiny.join("other.part")).unwrap();
    let at_once = Reservation::start(&g, 0, 20 << 20).map(|_| ());
    drop((f, g));
    umount(&disk);
    umount(&tiny);
    let (at, kind) = failed.expect("60 MiB reserved on 30 MiB");
    assert_eq!(kind, std::io::ErrorKind::StorageFull);
    assert!(
        at == 0 || (FIRST_SEGMENT / 2..30 << 20).contains(&at),
        "failed at {at}"
    );
    // Larger than the space: refused before the first write.
    assert_eq!(at_once.unwrap_err().kind(), std::io::ErrorKind::StorageFull);
}

/// Two transfers that each fit the free space, but not both together: each receiver
/// checked the free space alone and accepted, then they race for the last space while
/// reserving and writing. They cannot both land; whichever fails (the file system may
/// fail both: two reservations that together exceed the space can each run out midway)
/// says the storage is full, leaves nothing under the final name, and its sender knows;
/// whichever lands is intact.
#[test]
fn two_transfers_racing_for_the_last_space_fail_cleanly() {
    let p = pair_knowing(true, true);
    let disk = p.root.join("small");
    if !mount_tmpfs(&disk, "40m", "") {
        return;
    }
    let (src_a, src_b) = (p.root.join("a.bin"), p.root.join("b.bin"));
    write_data(&src_a, 24 << 20);
    write_data(&src_b, 24 << 20);
    let (out_a, out_b) = (disk.join("a"), disk.join("b"));
    let (mut rx_a, addr_a) = direct_receiver(&p, &out_a, &[]);
    let (mut rx_b, addr_b) = direct_receiver(&p, &out_b, &[]);
    let send = |src: &std::path::Path, addr: &str| {
        conduit(&p.sender)
            .arg("send")
            .arg(src)
            .args(["--to", "lab", "--direct", addr])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut tx_a, mut tx_b) = (send(&src_a, &addr_a), send(&src_b, &addr_b));
    let sent = [tx_a.wait().unwrap(), tx_b.wait().unwrap()];
    let received = [rx_a.finish(), rx_b.finish()];
    let outcome: Vec<(bool, bool)> = [(&src_a, &out_a), (&src_b, &out_b)]
        .iter()
        .map(|(src, out)| {
            let f = out.join(src.file_name().unwrap());
            (f.exists(), f.exists() && same_file(src, &f))
        })
        .collect();
    umount(&disk);
    assert!(
        !(received[0].0.success() && received[1].0.success()),
        "48 MiB landed on a 40 MiB file system"
    );
    for (i, ((status, _, err), (named, intact))) in received.iter().zip(&outcome).enumerate() {
        if status.success() {
            assert!(*intact, "transfer {i} succeeded but its file differs");
            assert!(sent[i].success(), "transfer {i}: the sender saw a failure");
        } else {
            assert!(
                !named,
                "transfer {i} failed but its file got its final name"
            );
            assert!(
                !sent[i].success(),
                "transfer {i}: the sender reported success"
            );
            let e = err.to_lowercase();
            assert!(
                e.contains("full") || e.contains("space"),
                "transfer {i}: {err}"
            );
        }
    }
}

/// A UDP relay between two loopback sockets that drops `loss` of the datagrams and delays
/// each by `delay`, both ways: a lossy, slow path made in the test (this machine has no
/// netem).
async fn lossy_path(to: SocketAddr, loss: f64, delay: Duration) -> SocketAddr {
    let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let dest = if from == to {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(from);
                to
            };
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if (rng % 10_000) as f64 / 10_000.0 < loss {
                continue;
            }
            let (sock, packet) = (Arc::clone(&sock), buf[..n].to_vec());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = sock.send_to(&packet, dest).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_loss_and_100_ms_rtt_still_deliver_the_file() {
    let p = pair_knowing(true, true);
    let src = p.root.join("lossy.bin");
    write_data(&src, 400_000);
    let out = p.root.join("out");
    let (rx, addr) = {
        let (p2, out2) = (&p, out.clone());
        let (r, a) = direct_receiver(p2, &out2, &[]);
        (r, a)
    };
    let path = lossy_path(addr.parse().unwrap(), 0.10, Duration::from_millis(50)).await;
    let (sender_home, src2) = (p.sender.clone(), src.clone());
    let sent = tokio::task::spawn_blocking(move || {
        conduit(&sender_home)
            .arg("send")
            .arg(&src2)
            .args(["--json", "--to", "lab", "--direct", &path.to_string()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let mut rx = rx;
    let (status, _, err) = tokio::task::spawn_blocking(move || rx.finish())
        .await
        .unwrap();
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(status.success(), "{err}");
    assert!(same_file(&src, &out.join("lossy.bin")));
}

#[test]
fn netem_loss_and_delay_in_a_network_namespace() {
    let ns = format!("conduit-{}", std::process::id());
    let made = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!(
            "SKIP: cannot create a network namespace here; the lossy-path test covers loss and delay"
        );
        return;
    }
    let ip = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    let netem = ip(&["ip", "link", "set", "lo", "up"])
        && ip(&[
            "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "50ms", "loss", "10%",
        ]);
    if !netem {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        eprintln!(
            "SKIP: this kernel has no netem qdisc; the lossy-path test covers loss and delay"
        );
        return;
    }
    let p = pair_knowing(true, true);
    let src = p.root.join("netem.bin");
    write_data(&src, 300_000);
    let out = p.root.join("out");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns,
        env!("CARGO_BIN_EXE_conduit"),
        "--home",
    ])
    .arg(&p.receiver)
    .args(["receive", "--json", "--listen", "127.0.0.1:0", "--out"])
    .arg(&out);
    let mut rx = Running::spawn(cmd);
    let addr = rx.first["addr"].as_str().unwrap().to_string();
    let sent = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            env!("CARGO_BIN_EXE_conduit"),
            "--home",
        ])
        .arg(&p.sender)
        .arg("send")
        .arg(&src)
        .args(["--to", "lab", "--direct", &addr])
        .output()
        .unwrap();
    let (status, _, _) = rx.finish();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(status.success());
    assert!(same_file(&src, &out.join("netem.bin")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_and_slow_hellos_leave_others_unaffected() {
    let relay = start_relay(&["--hello-timeout", "3"]);
    let relay_addr: SocketAddr = relay.addr.parse().unwrap();
    let pin = phi_conduit::relay::tokens::parse_sha256(&relay.pin).unwrap();
    // The attacker comes from 127.0.0.2: the relay's per-address limit must keep it from
    // using up what 127.0.0.1's clients need.
    let attacker = phi_conduit::transport::relay_client_from(
        "127.0.0.2:0".parse().unwrap(),
        &phi_conduit::transport::RelayTrust::Pin(pin),
    )
    .unwrap();
    let attack = std::time::Instant::now();
    let mut held = Vec::new();
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..10_000 {
        let Ok(connecting) = attacker.connect(relay_addr, "localhost") else {
            continue;
        };
        attempts.spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), connecting)
                .await
                .ok()?
                .ok()
        });
    }
    let mut opened = 0;
    while let Some(r) = attempts.join_next().await {
        if let Some(conn) = r.unwrap() {
            opened += 1;
            held.push(conn); // ...and never send a Hello.
        }
    }
    assert!(opened > 0, "no attacker connection opened at all");
    // At most 64 at a time from one address; a slot frees when the Hello timeout (3 s)
    // cuts its holder, so a slow attack run may see a few rounds.
    let rounds = 1 + attack.elapsed().as_secs() / 3;
    assert!(
        opened <= 64 * rounds as usize,
        "{opened} idle connections from one address in {rounds} Hello-timeout periods"
    );

    // Meanwhile a real transfer through the same relay.
    let relay = Arc::new(relay);
    let r2 = Arc::clone(&relay);
    let (ok, same) = tokio::task::spawn_blocking(move || {
        let p = pair_knowing(true, true);
        let src = p.root.join("a.bin");
        write_data(&src, 200_000);
        let out = p.root.join("out");
        let mut rx = receiver_via(&p, &r2, &out, &[]);
        let sent = send_via(&p, &r2, &[&src], &["--to", "lab"]);
        let rx_ok = rx.finish().0.success();
        (
            sent.status.success() && rx_ok,
            same_file(&src, &out.join("a.bin")),
        )
    })
    .await
    .unwrap();
    assert!(ok && same, "a legitimate transfer failed during the attack");
    // The slow Hellos are cut at the Hello timeout.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let closed = held.iter().filter(|c| c.close_reason().is_some()).count();
    assert_eq!(
        closed,
        held.len(),
        "idle connections outlived the Hello timeout"
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", relay.run.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:").map(|v| {
                v.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
        })
        .unwrap();
    eprintln!("relay peak RSS under attack: {rss} KiB");
    assert!(rss < 64 * 1024);
    let relay = Arc::try_unwrap(relay).ok().unwrap();
    let (status, log, _) = relay.stop();
    assert!(status.success());
    assert!(log.iter().any(|e| e["reason"] == "hello_timeout"));
}

#[test]
fn a_wrong_code_burns_the_nameplate_one_guess_per_code() {
    let p = pair_knowing(false, false);
    let relay = start_relay(&[]);
    let src = p.root.join("secret.txt");
    std::fs::write(&src, b"for the right receiver only").unwrap();
    let mut cmd = relay.cmd(&p.sender, "send");
    cmd.args(["--code"]).arg(&src);
    let mut tx = Running::spawn(cmd);
    let code = tx.first["code"].as_str().unwrap().to_string();
    let nameplate = code.split('-').next().unwrap();
    let guess = |words: &str| {
        relay
            .cmd(&p.receiver, "receive")
            .args(["--code"])
            .arg(format!("{nameplate}-{words}"))
            .arg("--out")
            .arg(p.root.join("out"))
            .output()
            .unwrap()
    };
    // The attacker knows the nameplate (it travels beside the code) but not the words.
    let mut words = "abandon-ability-able".to_string();
    if code.ends_with(&words) {
        words = "able-ability-abandon".to_string();
    }
    let first = guess(&words);
    assert_eq!(first.status.code(), Some(3), "{}", text(&first.stderr));
    let (status, _, err) = tx.finish();
    assert_eq!(
        status.code(),
        Some(3),
        "the sender must fail its wrong-code session: {err}"
    );
    // No second guess on that nameplate, not even with the right words.
    let second = guess(code.split_once('-').unwrap().1);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        text(&second.stderr).contains("rendezvous already in use"),
        "{}",
        text(&second.stderr)
    );
    assert!(!p.root.join("out").join("secret.txt").exists());
    let (_, log, _) = relay.stop();
    assert_eq!(events_with(&log, "rendezvous_taken"), 1);
}

fn events_with(log: &[serde_json::Value], reason: &str) -> usize {
    log.iter().filter(|e| e["reason"] == reason).count()
}

#[test]
fn repeated_guesses_get_the_address_rate_limited() {
    let p = pair_knowing(false, false);
    // Ten strikes per window (the default is 30 per 10 minutes).
    let relay = start_relay(&["--max-strikes", "10"]);
    let src = p.root.join("secret.txt");
    std::fs::write(&src, b"x").unwrap();
    let mut cmd = relay.cmd(&p.sender, "send");
    cmd.arg("--code").arg(&src);
    let mut tx = Running::spawn(cmd);
    let code = tx.first["code"].as_str().unwrap().to_string();
    let nameplate = code.split('-').next().unwrap().to_string();
    let guess = |words: &str| {
        relay
            .cmd(&p.receiver, "receive")
            .args(["--relay-wait", "0", "--code"])
            .arg(format!("{nameplate}-{words}"))
            .arg("--out")
            .arg(p.root.join("out"))
            .output()
            .unwrap()
    };
    // One real (wrong) guess burns the nameplate, after the sender is surely waiting.
    std::thread::sleep(Duration::from_millis(300));
    let words = if code.ends_with("abandon-ability-able") {
        "able-ability-abandon"
    } else {
        "abandon-ability-able"
    };
    assert_eq!(guess(words).status.code(), Some(3));
    let _ = tx.finish();
    // Then every attempt on it is a strike (the code's listener, its pairing and the
    // failed session were three already); past ten the address is refused before any
    // handshake.
    let mut outcomes = Vec::new();
    for _ in 0..14 {
        let o = guess(words);
        assert_eq!(o.status.code(), Some(1));
        outcomes.push(text(&o.stderr));
    }
    assert!(
        outcomes[0].contains("rendezvous already in use"),
        "{}",
        outcomes[0]
    );
    let last = outcomes.last().unwrap();
    assert!(
        !last.contains("rendezvous already in use"),
        "still answered: {last}"
    );
    assert!(
        last.contains("refused") || last.contains("connecting"),
        "{last}"
    );
    assert!(relay.stop().0.success());
}
