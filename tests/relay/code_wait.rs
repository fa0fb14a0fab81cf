//! Code mode waits for people at the relay (issue #20, defect 1): the side that starts
//! first waits for the other, here 20 s, beyond the relay's pairing timeout and the
//! default `--relay-wait`; "waiting at relay" is said only once the relay has the Hello.
//! The cases run in parallel (one test each).

use std::path::Path;
use std::time::Duration;

use phi_conduit::crypto::identity::Identity;
use phi_conduit::crypto::pake::Code;
use phi_conduit::crypto::pipeline::CipherPool;
use phi_conduit::relay::client::{self, RelayOptions};
use phi_conduit::relay::hello::Role;
use phi_conduit::transfer::{Recipient, Sender, rendezvous_for_code, source};
use phi_conduit::transport::RelayTrust;

use crate::common::*;

/// How long the side that starts first waits before the other starts.
const LATE: Duration = Duration::from_secs(20);

#[test]
fn the_code_receiver_started_20_s_after_the_sender_succeeds_relayed() {
    let p = pair_knowing(false, false);
    // The relay gives up on a waiting client after 9 s: the sender joins again, and
    // again, while its code is valid (the receiver comes 2 s after the second time).
    let relay = start_relay(&["--pairing-timeout", "9"]);
    let src = p.root.join("labs.csv");
    write_data(&src, 150_000);
    let mut cmd = relay.cmd(&p.sender, "send");
    cmd.arg("--code").arg(&src);
    let mut tx = Running::spawn(cmd);
    assert_eq!(tx.first["event"], "code", "{}", tx.first);
    // The exact command that works on the receiving side: the relay and its pin were
    // given on the command line, so they are part of it.
    assert_eq!(
        tx.first["receive"],
        format!(
            "conduit receive --code --relay {} --relay-pin {}",
            relay.addr, relay.pin
        )
    );
    let code = tx.first["code"].as_str().unwrap().to_string();
    std::thread::sleep(LATE);
    let inbox = p.root.join("inbox");
    let rx = relay
        .cmd(&p.receiver, "receive")
        // Bounded, should the sender be gone.
        .args(["--code", &code, "--code-wait", "30", "--out"])
        .arg(&inbox)
        .output()
        .unwrap();
    assert!(rx.status.success(), "receiver: {}", text(&rx.stderr));
    let (status, _, err) = tx.finish();
    assert!(status.success(), "sender: {err}");
    assert!(same_file(&src, &inbox.join("labs.csv")));
    let (_, log, _) = relay.stop();
    let timeouts = log
        .iter()
        .filter(|e| e["reason"] == "pairing_timeout")
        .count();
    assert!(
        timeouts >= 2,
        "the sender was not made to wait again: {log:?}"
    );
}

#[test]
fn the_code_sender_started_20_s_after_the_receiver_succeeds_relayed() {
    let p = pair_knowing(false, false);
    let relay = start_relay(&[]);
    // The receiver has the code first and finds no sender at the relay: it keeps trying
    // (past the default --relay-wait of 10 s) while the code is valid. The sender is a
    // library one given the same code.
    let code = "4343-crystal-harbor-orbit";
    let inbox = p.root.join("inbox");
    let rx = receiver_via(&p, &relay, &inbox, &["--code", code]);
    std::thread::sleep(LATE);
    let src = p.root.join("scan.dcm");
    write_data(&src, 100_000);
    let opts = RelayOptions {
        relays: vec![relay.addr.clone()],
        trust: RelayTrust::Pin(phi_conduit::relay::tokens::parse_sha256(&relay.pin).unwrap()),
        token: vec![],
        wait: Duration::ZERO,
        switch: true,
        punch: false,
        idle: phi_conduit::transport::IDLE_TIMEOUT,
    };
    let sent = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(library_send_at(&opts, code, &src));
    assert_eq!(sent, 1);
    let mut rx = rx;
    let (status, _, err) = rx.finish();
    assert!(status.success(), "receiver: {err}");
    assert!(same_file(&src, &inbox.join("scan.dcm")));
}

/// Waits at the relay with the code phrase `code` and sends `file`, as `send --code`
/// does; the number of files sent.
async fn library_send_at(opts: &RelayOptions, code: &str, file: &Path) -> usize {
    let code = Code::parse(code).unwrap();
    // Bounded: a receiver that gave up leaves this sender waiting for the relay's
    // pairing timeout (5 minutes).
    let joined = client::join(opts, Role::Listen, true, rendezvous_for_code(&code));
    let j = tokio::time::timeout(Duration::from_secs(30), joined)
        .await
        .expect("the receiver was no longer waiting at the relay")
        .unwrap();
    let sender = Sender::new(Identity::generate().unwrap(), CipherPool::new(1).unwrap());
    let files = source::collect_with_dirs(&[file.to_path_buf()]).unwrap();
    let sent = sender
        .send(
            &j.connection,
            &Recipient::Code(code),
            &files,
            std::future::pending(),
        )
        .await
        .unwrap();
    j.endpoint.wait_idle().await;
    sent.files.len()
}

#[test]
fn without_a_relay_nobody_is_told_they_wait_there_and_the_error_says_unreachable() {
    let p = pair_knowing(true, false);
    // A port nobody answers on.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay = format!("127.0.0.1:{port}");
    let src = p.root.join("a.txt");
    std::fs::write(&src, b"x").unwrap();
    let pin = "ab".repeat(32);
    let base = ["--relay", relay.as_str(), "--relay-pin", pin.as_str()];
    let runs = [
        (
            &p.receiver,
            vec!["receive", "--code", "1-crystal-harbor-orbit"],
        ),
        (&p.receiver, vec!["receive"]),
        (&p.sender, vec!["send", "--code", "a.txt"]),
        (&p.sender, vec!["send", "--to", "lab", "a.txt"]),
    ];
    let root = &p.root;
    std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|(home, args)| {
                s.spawn(move || {
                    let out = conduit(home)
                        .args(args)
                        .args(base)
                        .current_dir(root)
                        .output()
                        .unwrap();
                    (args.join(" "), out)
                })
            })
            .collect();
        for h in handles {
            let (args, out) = h.join().unwrap();
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(out.status.code(), Some(1), "{args}: {stderr}");
            // Nothing is said of waiting, and no code is shown that nobody could use.
            assert_eq!(stdout, "", "{args}");
            assert!(
                stderr.contains(&format!("relay {relay} is unreachable"))
                    && stderr.contains(&format!("UDP port {port}")),
                "{args}: {stderr}"
            );
        }
    });
}
