//! Operator commands: `conduit completions`, `conduit man`, `conduit certs`, and a relay
//! running on a certificate from `conduit certs`, verified by its CA.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Running, conduit, pair_knowing, same_file, scratch, text};

#[test]
fn completions_and_man_page_are_generated() {
    let sc = scratch();
    for shell in ["bash", "zsh", "fish"] {
        let out = sc.conduit().args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let t = text(&out.stdout);
        assert!(t.contains("relay") && t.contains("send"), "{shell}: {t}");
    }
    let out = sc.conduit().arg("man").output().unwrap();
    assert!(out.status.success());
    let t = text(&out.stdout);
    assert!(
        t.starts_with(".ie") || t.contains(".TH"),
        "not roff: {}",
        &t[..t.len().min(80)]
    );
    assert!(t.contains("conduit"));
}

/// `conduit man --dir DIR` writes a roff page for every command and subcommand (issue
/// #20: only the top level had one), each documenting that command's own flags.
#[test]
fn man_writes_a_page_per_subcommand() {
    let sc = scratch();
    let out = sc
        .conduit()
        .args(["man", "--dir", "pages"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(sc.path().join("pages"))
        .unwrap()
        .map(|e| format!("pages/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, on_disk, "the list names exactly the files written");
    // Every visible command and subcommand, from its help's command list.
    for (page, flag) in [
        ("conduit.1", "--home"),
        ("conduit-send.1", "--relay-wait"),
        ("conduit-receive.1", "--daemon"),
        ("conduit-relay.1", "--verbose"),
        ("conduit-peers-add.1", "KEY"),
        ("conduit-audit-show.1", "--since"),
        ("conduit-config-show.1", "--home"),
        ("conduit-certs-relay.1", "--ca"),
        ("conduit-bench-cipher.1", "--chunk-size"),
        ("conduit-man.1", "--dir"),
    ] {
        let t = std::fs::read_to_string(sc.path().join("pages").join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}; written: {listed:?}"));
        let name = page.trim_end_matches(".1");
        assert!(t.contains(&format!(".TH {name} 1")), "{page}: {t}");
        assert!(
            t.contains(&flag.replace('-', "\\-")),
            "{page} lacks {flag}: {t}"
        );
    }
    // The hidden helper of `bench transfer` has no page.
    assert!(!listed.iter().any(|p| p.contains("raw")), "{listed:?}");
    // One subcommand's page on stdout.
    let out = sc
        .conduit()
        .args(["man", "audit", "verify"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(text(&out.stdout).contains(".TH conduit-audit-verify 1"));
}

#[test]
fn certs_make_a_ca_and_a_relay_certificate_with_private_keys() {
    let sc = scratch();
    let dir = tempfile::tempdir().unwrap();
    let (ca, relay) = (dir.path().join("ca"), dir.path().join("relay"));
    let out = sc
        .conduit()
        .args(["certs", "ca", "--out"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = sc
        .conduit()
        .args([
            "certs",
            "relay",
            "--name",
            "127.0.0.1",
            "--name",
            "localhost",
            "--ca",
        ])
        .arg(&ca)
        .arg("--out")
        .arg(&relay)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("pin: "));
    for key in [ca.join("ca.key"), relay.join("relay.key")] {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
        assert!(
            std::fs::read_to_string(&key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
    }
    // The chain holds the relay's certificate and the CA's.
    let chain = std::fs::read_to_string(relay.join("relay.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    // No silent overwrite.
    let again = sc
        .conduit()
        .args(["certs", "ca", "--out"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("--force"));
}

#[test]
fn a_relay_on_a_ca_signed_certificate_is_verified_by_name_and_ca() {
    let sc = scratch();
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca, relay_dir) = (
        dir.path().join("ca"),
        dir.path().join("other"),
        dir.path().join("relay"),
    );
    for d in [&ca, &other_ca] {
        assert!(
            sc.conduit()
                .args(["certs", "ca", "--out"])
                .arg(d)
                .output()
                .unwrap()
                .status
                .success()
        );
    }
    assert!(
        sc.conduit()
            .args(["certs", "relay", "--name", "127.0.0.1", "--ca"])
            .arg(&ca)
            .arg("--out")
            .arg(&relay_dir)
            .output()
            .unwrap()
            .status
            .success()
    );
    let mut cmd = sc.conduit();
    cmd.args(["relay", "--listen", "127.0.0.1:0", "--json", "--cert"])
        .arg(relay_dir.join("relay.pem"))
        .arg("--key")
        .arg(relay_dir.join("relay.key"));
    let relay = Running::spawn(cmd);
    let addr = relay.first["addr"].as_str().unwrap().to_string();

    let p = pair_knowing(true, true);
    let src = p.root.join("a.txt");
    std::fs::write(&src, b"verified relay").unwrap();
    let out = p.root.join("out");
    let ca_pem = ca.join("ca.pem");
    let mut rx = conduit(&p.receiver);
    rx.args(["receive", "--json", "--relay", &addr, "--relay-ca"])
        .arg(&ca_pem)
        .arg("--out")
        .arg(&out);
    let mut rx = Running::spawn(rx);
    let sent = conduit(&p.sender)
        .arg("send")
        .arg(&src)
        .args(["--to", "lab", "--relay", &addr, "--relay-ca"])
        .arg(&ca_pem)
        .output()
        .unwrap();
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(rx.finish().0.success());
    assert!(same_file(&src, &out.join("a.txt")));

    // Another CA does not vouch for this relay.
    let refused = conduit(&p.sender)
        .arg("send")
        .arg(&src)
        .args(["--to", "lab", "--relay", &addr, "--relay-ca"])
        .arg(other_ca.join("ca.pem"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = text(&refused.stderr);
    assert!(
        err.contains("connecting to relay") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn the_relay_makes_no_core_dump() {
    let sc = scratch();
    let mut cmd = sc.conduit();
    cmd.args([
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--dev-self-signed",
        "--json",
    ]);
    let mut relay = Running::spawn(cmd);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", relay.child.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], &["0", "0"], "{core}");
    relay.signal(libc::SIGTERM);
    assert!(relay.finish().0.success());
}

#[test]
// The refusal itself (exit 2, the usage line) is tests/cmd/relay-without-certificate.toml.
fn the_relay_refuses_to_start_without_a_certificate() {
    let sc = scratch();
    let mut cmd = sc.conduit();
    cmd.args([
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--dev-self-signed",
        "--json",
    ]);
    let mut dev = Running::spawn(cmd);
    dev.signal(libc::SIGTERM);
    let (status, _, err) = dev.finish();
    assert!(status.success());
    assert!(err.contains("WARNING: --dev-self-signed"), "{err}");
}

#[test]
fn systemd_accepts_the_units() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIP: systemd-analyze is not installed here");
        return;
    };
    assert!(probe.status.success());
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    for (unit, name) in [
        ("conduit-relay.service", "conduit-relay.service"),
        ("conduit-receive@.service", "conduit-receive@alice.service"),
        ("conduit-agent@.service", "conduit-agent@alice.service"),
    ] {
        // The units name the installed binary; check them against this build's.
        let text = std::fs::read_to_string(root.join(unit))
            .unwrap()
            .replace("/usr/local/bin/conduit", env!("CARGO_BIN_EXE_conduit"));
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{name}: {err}"
        );
    }
}
