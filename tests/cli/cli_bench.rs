//! `conduit bench cipher` as a user runs it: the real binary.

use crate::common::scratch;

#[test]
fn bench_cipher_json_has_every_documented_key() {
    let sc = scratch();
    let out = sc
        .conduit()
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
        Some("aws-lc-rs" | "ring" | "rustcrypto")
    ));
    // By default, the suite a transfer on this machine chooses.
    let auto = phi_conduit::crypto::suite::SuitePolicy::Auto.local_choice();
    assert_eq!(v["suite"].as_str(), Some(auto.name()));
}

#[test]
fn bench_cipher_measures_each_suite_asked_for_one_json_line_each() {
    let out = scratch()
        .conduit()
        .args([
            "bench",
            "cipher",
            "--json",
            "--size",
            "1048576",
            "--threads",
            "1",
        ])
        .args(["--suite", "chacha20-poly1305", "--suite", "aes-256-gcm"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let suites: Vec<_> = lines.iter().map(|v| v["suite"].as_str().unwrap()).collect();
    assert_eq!(suites, ["chacha20-poly1305", "aes-256-gcm"]);
    for v in &lines {
        assert!(v["stream_seal_1t_gbps"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn bench_transfer_json_has_every_documented_key_and_consistent_ratios() {
    let sc = scratch();
    let dir = tempfile::tempdir().unwrap();
    let out = sc
        .conduit()
        .args([
            "bench", "transfer", "--json", "--size", "4000000", "--runs", "2", "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "raw_quinn_mbps",
        "direct_mbps",
        "relayed_mbps",
        "raw_relay_mbps",
        "stream_seal_1t_mbps",
        "blake3_1t_mbps",
        "ideal_direct_mbps",
        "sender_cpu_s_per_gb",
        "receiver_cpu_s_per_gb",
        "relay_cpu_s_per_gb",
        "raw_sender_cpu_s_per_gb",
        "raw_receiver_cpu_s_per_gb",
        "raw_files_mbps",
        "raw_files_sender_cpu_s_per_gb",
        "raw_files_receiver_cpu_s_per_gb",
        "ideal_direct_with_files_mbps",
        "direct_vs_ideal_with_files",
    ] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {v}"));
        assert!(x.is_finite() && x >= 0.0, "{key} = {x}");
    }
    assert_eq!(v["size_bytes"], 4_000_000);
    assert_eq!(v["runs"], 2);
    assert!(v["relay_peak_rss_bytes"].as_u64().unwrap() > 0);
    let f = |k: &str| v[k].as_f64().unwrap();
    let ideal = 1.0
        / (1.0 / f("raw_quinn_mbps") + 1.0 / f("stream_seal_1t_mbps") + 1.0 / f("blake3_1t_mbps"));
    assert!((f("ideal_direct_mbps") - ideal).abs() < 1e-6 * ideal);
    assert!(
        (f("direct_vs_ideal") - f("direct_mbps") / ideal).abs()
            < 1e-9 * f("direct_vs_ideal").max(1.0)
    );
    let with_files = 1.0
        / (1.0 / f("raw_files_mbps") + 1.0 / f("stream_seal_1t_mbps") + 1.0 / f("blake3_1t_mbps"));
    assert!((f("ideal_direct_with_files_mbps") - with_files).abs() < 1e-6 * with_files);
    assert!(
        (f("direct_vs_ideal_with_files") - f("direct_mbps") / with_files).abs()
            < 1e-9 * f("direct_vs_ideal_with_files").max(1.0)
    );
    // The temporary files are gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_transfer_splits_the_bytes_into_files_and_rejects_bad_counts() {
    let sc = scratch();
    let dir = tempfile::tempdir().unwrap();
    let out = sc
        .conduit()
        .args([
            "bench", "transfer", "--json", "--size", "3000001", "--files", "7", "--runs", "1",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"], 7);
    assert_eq!(v["size_bytes"], 3_000_001);
    assert!(v["direct_mbps"].as_f64().unwrap() > 0.0);
    for bad in ["0", "3000002"] {
        let out = sc
            .conduit()
            .args([
                "bench", "transfer", "--size", "3000001", "--files", bad, "--dir",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "--files {bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--files"));
    }
}

#[test]
fn the_raw_file_baseline_moves_the_files_bytes_exactly() {
    let sc = scratch();
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    // Two files, not multiples of the chunk size, sent one after the other.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let data_a: Vec<u8> = (0..700_001u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let data_b: Vec<u8> = (0..300_003u32).map(|i| (i * 13 + 5) as u8).collect();
    std::fs::write(&a, &data_a).unwrap();
    std::fs::write(&b, &data_b).unwrap();
    let out = dir.path().join("out.bin");
    let mut rx = sc
        .conduit()
        .args([
            "bench",
            "raw-peer",
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(rx.stdout.take().unwrap()).lines();
    let listening: serde_json::Value =
        serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let addr = listening["addr"].as_str().unwrap().to_string();
    let sent = sc
        .conduit()
        .args(["bench", "raw-peer", "send", "--direct", &addr, "--file"])
        .arg(&a)
        .arg("--file")
        .arg(&b)
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(rx.wait().unwrap().success());
    let done: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(done["bytes"], 1_000_004);
    let mut want = data_a;
    want.extend_from_slice(&data_b);
    assert!(
        std::fs::read(&out).unwrap() == want,
        "the received file differs"
    );
}

#[test]
fn bench_relay_pushes_datagrams_through_a_relay_that_stays_up() {
    // The relay logs a line per session after its first: the bench must keep reading
    // its output, or the relay dies on a closed pipe and the run fails (whether the relay
    // writes before the run ends is a race: three runs).
    let sc = scratch();
    for _ in 0..3 {
        let out = sc
            .conduit()
            .args(["bench", "relay", "--json", "--size", "4194304"])
            .output()
            .unwrap();
        check_relay_run(&out);
    }
}

fn check_relay_run(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["sent_packets"].as_u64().unwrap() > 0, "{v}");
    let forwarded = v["forwarded_packets"].as_u64().unwrap();
    assert!(forwarded > 0, "nothing forwarded: {v}");
    assert!(forwarded <= v["sent_packets"].as_u64().unwrap(), "{v}");
    assert!(v["relay_peak_rss_bytes"].as_u64().unwrap() > 0, "{v}");
}
