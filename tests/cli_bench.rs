//! `conduit bench cipher` as a user runs it: the real binary.

use std::process::Command;

fn conduit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_conduit"))
}

#[test]
fn bench_cipher_json_has_every_documented_key() {
    let out = conduit()
        .args([
            "bench",
            "cipher",
            "--json",
            "--size",
            "2097152",
            "--chunk-size",
            "65536",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "bare_seal_gbps",
        "stream_seal_1t_gbps",
        "stream_seal_nt_gbps",
        "bare_open_gbps",
        "stream_open_1t_gbps",
        "stream_open_nt_gbps",
        "blake3_1t_gbps",
    ] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} missing"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x}");
    }
    assert_eq!(v["threads"], 2);
    assert_eq!(v["chunk_size"], 65536);
    assert!(matches!(
        v["aead_backend"].as_str(),
        Some("ring" | "rustcrypto")
    ));
}

#[test]
fn bench_cipher_rejects_a_chunk_size_outside_the_set_with_a_clear_error() {
    let out = conduit()
        .args(["bench", "cipher", "--chunk-size", "1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chunk size 1000 is not allowed"), "{err}");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = conduit()
        .args(["bench", "cipher", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
