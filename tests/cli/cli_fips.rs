//! FIPS mode as the binary reports it (every build) and the transfers a FIPS build refuses
//! (`--features fips` only; CI builds and runs these there, docs/FIPS.md).

use crate::common::{self, text};

const FIPS: bool = cfg!(feature = "fips");

#[test]
fn version_and_id_say_whether_the_binary_is_in_fips_mode_and_on_which_module() {
    let s = common::scratch();
    let out = s.conduit().arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let version = text(&out.stdout);
    let expected = if FIPS {
        "FIPS mode: on (AWS-LC FIPS "
    } else {
        "FIPS mode: off (default build on AWS-LC "
    };
    assert!(version.contains(expected), "{version}");
    if FIPS {
        assert!(version.contains("self-tests passed"), "{version}");
    }

    let home = s.path().join("home");
    assert!(
        common::conduit(&home)
            .arg("keygen")
            .output()
            .unwrap()
            .status
            .success()
    );
    let out = common::conduit(&home)
        .args(["id", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fips"]["fips_mode"], FIPS, "{v}");
    let passed = if FIPS {
        serde_json::json!(true)
    } else {
        serde_json::Value::Null
    };
    assert_eq!(v["fips"]["self_test"], passed, "{v}");
    let module = v["fips"]["module"].as_str().unwrap();
    assert_eq!(module.starts_with("AWS-LC FIPS "), FIPS, "{module}");
    let out = common::conduit(&home).arg("id").output().unwrap();
    assert!(
        text(&out.stdout).contains(expected),
        "{}",
        text(&out.stdout)
    );
}

/// A FIPS build moves nothing over what FIPS mode does not allow: a code phrase
/// (SPAKE2) at either end, a recipient without a FIPS pin, a suite other than the one
/// with module-generated IVs; each refused at start with exit code 7 and a message
/// saying why, before any connection.
#[cfg(feature = "fips")]
#[test]
fn a_fips_build_refuses_code_phrases_unpinned_peers_and_unapproved_suites() {
    let p = common::pair_knowing(true, true);
    let out_dir = p.root.join("in");
    let file = p.root.join("note.txt");
    std::fs::write(&file, b"synthetic visit note").unwrap();
    let refused = |args: &[&str], why: &str| {
        let out = common::conduit(&p.sender).args(args).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "{args:?}: {err}");
        assert!(
            err.contains("not allowed in FIPS mode") && err.contains(why),
            "{err}"
        );
    };
    let f = file.to_str().unwrap();
    let o = out_dir.to_str().unwrap();
    refused(&["send", f, "--code", "--direct", "127.0.0.1:9"], "SPAKE2");
    refused(
        &["send", f, "--to", "lab", "--direct", "127.0.0.1:9"],
        "no FIPS pin",
    );
    let listen = ["receive", "--listen", "127.0.0.1:0", "--out", o];
    refused(
        &[&listen[..], &["--code", "7-purple-orbit-window"]].concat(),
        "SPAKE2",
    );
    refused(
        &[&listen[..], &["--suite", "chacha20-poly1305"]].concat(),
        "chacha20-poly1305",
    );
    assert!(!out_dir.exists() || std::fs::read_dir(&out_dir).unwrap().next().is_none());
}
