//! `receive --code` reading the code from standard input (not a terminal): words given by
//! their start are completed, one mistyped word is corrected and said so, and a word that
//! cannot be read is named.

use std::process::Stdio;

use crate::common::*;

/// Runs `receive --json --listen 127.0.0.1:0 --code` with `typed` as standard input.
fn receive_reading(home: &std::path::Path, typed: &str) -> std::process::Command {
    let input = home.parent().unwrap().join("typed-code.txt");
    std::fs::write(&input, format!("{typed}\n")).unwrap();
    let mut cmd = conduit(home);
    cmd.args(["receive", "--json", "--listen", "127.0.0.1:0", "--code"])
        .stdin(std::fs::File::open(&input).unwrap());
    cmd
}

#[test]
fn a_code_read_from_standard_input_is_completed_and_corrected() {
    let p = pair_knowing(false, false);
    // The first word by its start, the second mistyped, the third by its start.
    let rx = Running::spawn(receive_reading(&p.receiver, "7-cryst-harbour-orbi"));
    assert_eq!(rx.first["event"], "listening", "{}", rx.first);
    rx.signal(libc::SIGTERM);
    let mut rx = rx;
    let (_, _, err) = rx.finish();
    assert!(
        err.contains(
            "code word 2 (\"harbour\") is not in the word list; read as \"harbor\", the closest word"
        ),
        "{err}"
    );
    // A completion goes without saying.
    assert!(!err.contains("cryst\""), "{err}");
}

#[test]
fn a_code_word_that_cannot_be_read_from_standard_input_is_named() {
    let p = pair_knowing(false, false);
    let out = receive_reading(&p.receiver, "7-crystal-harbor-qqqqqq")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        "",
        "nothing listens for a code that cannot be right"
    );
    assert_eq!(
        text(&out.stderr),
        "error: code word 3 (\"qqqqqq\") is not in the word list (BIP-39 English): check the code the sender printed\n"
    );
}
