//! Code mode waits for people (issue #20, defect 1): the side of a direct code-phrase
//! transfer that starts first waits for the other, here 20 s. The cases run in parallel
//! (one test each), so the binary takes about 20 s longer, not 40.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use phi_conduit::crypto::identity::Identity;
use phi_conduit::crypto::pake::Code;
use phi_conduit::crypto::pipeline::CipherPool;
use phi_conduit::transfer::{Recipient, Sender, Summary, source};

use crate::common::*;

/// How long the side that starts first waits before the other starts.
const LATE: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `code` with one word mistyped (a letter doubled, left out or two swapped) so that it
/// is corrected, not completed to another word: which edit depends on the random words.
fn mistyped(code: &str) -> (usize, String) {
    use phi_conduit::crypto::pake::Fix;
    let right = Code::parse(code).unwrap();
    let parts: Vec<&str> = code.split('-').collect();
    for position in 1..=3 {
        let w: Vec<char> = parts[position].chars().collect();
        let mut edits = vec![];
        let mut doubled = w.clone();
        doubled.push(w[w.len() - 1]);
        edits.push(doubled);
        let mut dropped = w.clone();
        dropped.remove(1);
        edits.push(dropped);
        let mut swapped = w.clone();
        swapped.swap(1, 2);
        edits.push(swapped);
        for e in edits {
            let mut typed: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
            typed[position] = e.into_iter().collect();
            let typed = typed.join("-");
            if let Ok((c, fixes)) = Code::parse_forgiving(&typed) {
                if c == right && matches!(fixes.as_slice(), [Fix::Corrected { .. }]) {
                    return (position, typed);
                }
            }
        }
    }
    panic!("no mistyping of {code} is corrected")
}

#[test]
fn the_code_receiver_started_20_s_after_the_sender_succeeds_direct() {
    let p = pair_knowing(false, false);
    let src = p.root.join("report.pdf");
    write_data(&src, 200_000);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut sender = conduit(&p.sender)
        .arg("send")
        .arg(&src)
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
    assert_eq!(v["event"], "code", "{v}");
    // The exact command that works on the receiving side, and how long the code lasts.
    assert_eq!(
        v["receive"],
        format!("conduit receive --listen 0.0.0.0:{port} --code")
    );
    assert_eq!(v["valid_secs"], 600);
    let code = v["code"].as_str().unwrap().to_string();
    std::thread::sleep(LATE);
    // Typed (on standard input) with one word mistyped: corrected, and said so.
    let inbox = p.root.join("inbox");
    let mut receiver = conduit(&p.receiver)
        .args(["receive", "--listen", &addr, "--code", "--out"])
        .arg(&inbox)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (position, typed) = mistyped(&code);
    writeln!(receiver.stdin.take().unwrap(), "{typed}").unwrap();
    let r = receiver.wait_with_output().unwrap();
    let r_err = text(&r.stderr);
    if !r.status.success() {
        // Not left waiting for the code to expire.
        let _ = sender.kill();
    }
    let s = sender.wait_with_output().unwrap();
    assert!(s.status.success(), "sender: {}", text(&s.stderr));
    assert!(r.status.success(), "receiver: {r_err}");
    assert!(same_file(&src, &inbox.join("report.pdf")));
    assert!(
        r_err.contains(&format!("code word {position}")) && r_err.contains("the closest word"),
        "{r_err}"
    );
    // The sender's attempts while nobody listened never reach the receiver as
    // connections that fail.
    assert!(!r_err.contains("failed"), "{r_err}");
}

#[test]
fn the_code_sender_started_20_s_after_the_receiver_succeeds_direct() {
    let p = pair_knowing(false, false);
    // The code came before (a sender's code is shown once it waits; here the receiver
    // has it first and the sender is a library one given the same code).
    let code = "4242-crystal-harbor-orbit";
    let inbox = p.root.join("inbox");
    let (mut rx, addr) = direct_receiver(&p, &inbox, &["--code", code]);
    std::thread::sleep(LATE);
    let src = p.root.join("scan.dcm");
    write_data(&src, 100_000);
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let sent = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let endpoint =
            phi_conduit::transport::direct_client_with(addr, Duration::from_secs(10)).unwrap();
        let conn = endpoint
            .connect(addr, "phi-conduit")
            .unwrap()
            .await
            .unwrap();
        let got = library_send(&conn, code, &src).await;
        endpoint.wait_idle().await;
        got
    });
    assert_eq!(sent.files.len(), 1);
    let (status, _, err) = rx.finish();
    assert!(status.success(), "receiver: {err}");
    assert!(same_file(&src, &inbox.join("scan.dcm")));
}

/// Sends `file` over `conn` with the code phrase `code`, as `send --code` does.
pub async fn library_send(conn: &quinn::Connection, code: &str, file: &Path) -> Summary {
    let sender = Sender::new(Identity::generate().unwrap(), CipherPool::new(1).unwrap());
    let files = source::collect_with_dirs(&[file.to_path_buf()]).unwrap();
    let to = Recipient::Code(Code::parse(code).unwrap());
    sender
        .send(conn, &to, &files, std::future::pending())
        .await
        .unwrap()
}
