//! The case files under tests/cmd/: usage, help and error output of the real binary, with
//! exit codes. Each `*.toml` case runs `conduit` in a fresh temporary directory
//! (`fs.sandbox = true`) with `CONDUIT_HOME=home` inside it, so nothing is written
//! outside temporary directories. Regenerate the expected output after an intended change
//! with `TRYCMD=overwrite cargo test --test cli cmd_cases`, then read the diff.

#[test]
fn cmd_cases() {
    trycmd::TestCases::new()
        .register_bin(
            "conduit",
            std::path::Path::new(env!("CARGO_BIN_EXE_conduit")),
        )
        .env("CONDUIT_HOME", "home")
        .env("NO_COLOR", "1")
        .case("tests/cmd/*.toml")
        .case("tests/cmd/*.trycmd");
}

/// Every transcript (`NAME.trycmd`) has its sandbox directory `NAME.out/` beside it:
/// without one trycmd runs the transcript in the checkout, and what it writes there (an
/// identity under `home/`) is left behind.
#[test]
fn every_transcript_runs_in_a_sandbox() {
    let mut checked = 0;
    for entry in std::fs::read_dir("tests/cmd").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("trycmd") {
            continue;
        }
        let sandbox = path.with_extension("out");
        assert!(
            sandbox.join(".keep").is_file(),
            "{} has no {}/.keep: add it so that the transcript runs in a temporary copy",
            path.display(),
            sandbox.display()
        );
        checked += 1;
    }
    assert!(checked > 0, "no transcript found");
}

/// No case file's expected output (stdout, stderr, transcripts) names a Rust type or enum
/// variant (`UnknownPeer`, `Io(`, `early eof`, ...): what a command prints is for people.
#[test]
fn no_case_output_names_a_rust_type() {
    let mut checked = 0;
    for entry in std::fs::read_dir("tests/cmd").unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "stdout" | "stderr" | "trycmd") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        crate::common::assert_no_rust_names(&path.display().to_string(), &text);
        checked += 1;
    }
    assert!(checked > 50, "only {checked} case files found");
}

/// The check itself finds what it is for.
#[test]
fn the_rust_name_check_finds_debug_formats() {
    use crate::common::rust_names;
    for bad in [
        "error: peer aborted: Protocol",
        "error: UnknownPeer",
        "code: CodeMismatch",
        "control stream: early eof",
        "failed: Io(Custom { kind: Other })",
        "got Some(3)",
        "aborted by peer: ApplicationClose { error_code: 2 }",
    ] {
        assert!(!rust_names(bad).is_empty(), "{bad}");
    }
    for good in [
        "Send files and directories to a known peer or by code phrase.",
        "error: lab refused: report.pdf already exists there; they can re-run with --overwrite",
        "error: connection: the peer stopped the transfer (Ctrl-C or SIGTERM there)",
        "Usage: conduit send [OPTIONS] <PATHS>...",
    ] {
        assert!(
            rust_names(good).is_empty(),
            "{good}: {:?}",
            rust_names(good)
        );
    }
}
