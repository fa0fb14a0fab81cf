//! `conduit.toml`: values from the file apply to real transfers and to the relay; flags
//! beat environment variables, which beat the file; `conduit config show` says where each
//! value came from; an unknown key is an error naming its line.

use crate::common;

use std::path::Path;

use common::{Running, conduit, pair_knowing, start_relay, text};
use serde_json::Value;

fn write_config(home: &Path, toml: &str) {
    std::fs::write(home.join("conduit.toml"), toml).unwrap();
}

fn show(home: &Path, envs: &[(&str, &str)]) -> Value {
    let out = conduit(home)
        .args(["config", "show", "--json"])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn setting<'a>(v: &'a Value, key: &str) -> &'a Value {
    v["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn show_reports_each_value_and_its_source() {
    let p = pair_knowing(false, false);
    let v = show(&p.receiver, &[]);
    assert_eq!(v["file_present"], false);
    assert_eq!(setting(&v, "transfer.out")["value"], ".");
    assert_eq!(setting(&v, "transfer.out")["source"], "default");
    assert_eq!(setting(&v, "transfer.relay")["value"], Value::Null);
    write_config(
        &p.receiver,
        "[transfer]\nout = \"/srv/inbox\"\nauto_accept = true\n\n[audit]\nnames = \"hash\"\n\n[relay.limits]\nmax_sessions = 7\n",
    );
    let v = show(&p.receiver, &[]);
    assert_eq!(v["file_present"], true);
    assert_eq!(setting(&v, "transfer.out")["value"], "/srv/inbox");
    assert_eq!(setting(&v, "transfer.out")["source"], "file");
    assert_eq!(setting(&v, "transfer.auto_accept")["value"], "true");
    assert_eq!(setting(&v, "audit.names")["value"], "hash");
    assert_eq!(setting(&v, "relay.limits.max_sessions")["value"], "7");
    assert_eq!(
        setting(&v, "relay.limits.max_connections")["source"],
        "default"
    );
    // The environment beats the file.
    let v = show(&p.receiver, &[("CONDUIT_OUT", "/elsewhere")]);
    assert_eq!(setting(&v, "transfer.out")["value"], "/elsewhere");
    assert_eq!(setting(&v, "transfer.out")["source"], "env");
    // For people: one line per key with its source.
    let out = conduit(&p.receiver)
        .args(["config", "show"])
        .output()
        .unwrap();
    let t = text(&out.stdout);
    assert!(
        t.lines()
            .any(|l| l.starts_with("transfer.out") && l.ends_with("# conduit.toml")),
        "{t}"
    );
}

#[test]
fn an_unknown_key_or_a_wrong_type_is_an_error_with_its_line() {
    let p = pair_knowing(false, false);
    write_config(&p.receiver, "[transfer]\nout = \"x\"\noverwirte = true\n");
    for args in [
        &["config", "show"][..],
        &["receive", "--listen", "127.0.0.1:0"][..],
    ] {
        let out = conduit(&p.receiver).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("line 3") && err.contains("overwirte"), "{err}");
    }
    write_config(&p.receiver, "[audit]\nnames = \"rot13\"\n");
    let out = conduit(&p.receiver)
        .args(["config", "show"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("line 2"),
        "{}",
        text(&out.stderr)
    );
    write_config(
        &p.receiver,
        "[transfer]\nrelay_pin = \"00\"\nrelay_ca = \"ca.pem\"\n",
    );
    let out = conduit(&p.receiver)
        .args(["config", "show"])
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("not both"),
        "{}",
        text(&out.stderr)
    );
}

/// A direct receiver configured by `conduit.toml`; `extra` flags and `envs` on top.
fn receive_once(p: &common::Pair, extra: &[&str], envs: &[(&str, &str)], file: &Path) -> Running {
    let mut cmd = conduit(&p.receiver);
    cmd.args(["receive", "--json", "--listen", "127.0.0.1:0"])
        .args(extra)
        .envs(envs.iter().copied());
    let rx = Running::spawn(cmd);
    let addr = rx.first["addr"].as_str().unwrap().to_string();
    let s = conduit(&p.sender)
        .arg("send")
        .arg(file)
        .args(["--to", "lab", "--direct", &addr])
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", text(&s.stderr));
    rx
}

#[test]
fn the_file_sets_the_destination_and_audit_names_and_flags_and_env_override_it() {
    // The receiver does not know the sender: the file's accept policy lets it in.
    let p = pair_knowing(true, false);
    let (from_file, from_env, from_flag) = (
        p.root.join("inbox-file"),
        p.root.join("inbox-env"),
        p.root.join("inbox-flag"),
    );
    for d in [&from_file, &from_env, &from_flag] {
        std::fs::create_dir_all(d).unwrap();
    }
    write_config(
        &p.receiver,
        &format!(
            "[transfer]\nout = {:?}\naccept_unknown = true\nauto_accept = true\noverwrite = true\n\n[audit]\nnames = \"hash\"\n",
            from_file.display().to_string()
        ),
    );
    let file = p.root.join("Doe, Jane.pdf");
    std::fs::write(&file, b"chart").unwrap();
    // File only.
    let mut rx = receive_once(&p, &[], &[], &file);
    assert!(rx.finish().0.success());
    assert_eq!(
        std::fs::read(from_file.join("Doe, Jane.pdf")).unwrap(),
        b"chart"
    );
    // Again: overwrite = true in the file lets the same name be replaced.
    let mut rx = receive_once(&p, &[], &[], &file);
    assert!(rx.finish().0.success());
    // The environment beats the file; a flag beats the environment.
    let env = [("CONDUIT_OUT", from_env.to_str().unwrap())];
    let mut rx = receive_once(&p, &[], &env, &file);
    assert!(rx.finish().0.success());
    assert!(from_env.join("Doe, Jane.pdf").exists());
    let mut rx = receive_once(&p, &["--out", from_flag.to_str().unwrap()], &env, &file);
    assert!(rx.finish().0.success());
    assert!(from_flag.join("Doe, Jane.pdf").exists());
    // [audit] names = "hash": no file name in the receiver's log; the flag overrides it.
    let log = |home: &Path| -> String {
        std::fs::read_dir(home.join("audit"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    };
    assert!(!log(&p.receiver).contains("Jane"));
    assert!(log(&p.receiver).contains("path_hash"));
    let mut rx = receive_once(&p, &["--audit-names", "plain"], &[], &file);
    assert!(rx.finish().0.success());
    assert!(log(&p.receiver).contains("Doe, Jane.pdf"));
}

#[test]
fn a_relay_set_in_the_file_is_used_without_flags_and_its_limits_apply_to_conduit_relay() {
    let p = pair_knowing(true, true);
    let relay = start_relay(&[]);
    for home in [&p.sender, &p.receiver] {
        write_config(
            home,
            &format!(
                "[transfer]\nrelay = {:?}\nrelay_pin = {:?}\n",
                relay.addr, relay.pin
            ),
        );
    }
    let out = p.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut cmd = conduit(&p.receiver);
    cmd.args(["receive", "--json", "--out"]).arg(&out);
    let mut rx = Running::spawn(cmd);
    assert_eq!(rx.first["event"], "joining", "{}", rx.first);
    let file = p.root.join("x.txt");
    std::fs::write(&file, b"via the configured relay").unwrap();
    let s = conduit(&p.sender)
        .arg("send")
        .arg(&file)
        .args(["--to", "lab"])
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", text(&s.stderr));
    assert!(rx.finish().0.success());
    assert_eq!(
        std::fs::read(out.join("x.txt")).unwrap(),
        b"via the configured relay"
    );
    relay.stop();
    // Without any relay or address: a usage error.
    let bare = pair_knowing(true, true);
    let out = conduit(&bare.sender)
        .args(["send", file.to_str().unwrap(), "--to", "lab"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--direct ADDR or --relay ADDRS"));
    // [relay.limits] in the home's file applies to `conduit relay`: fewer sessions, a
    // smaller memory bound.
    let default_bound = start_relay(&[]);
    let home = p.root.join("relay-home");
    std::fs::create_dir_all(&home).unwrap();
    write_config(&home, "[relay.limits]\nmax_sessions = 2\n");
    let small = start_relay(&["--home", home.to_str().unwrap()]);
    let (a, b) = (
        default_bound.run.first["memory_bound_bytes"]
            .as_u64()
            .unwrap(),
        small.run.first["memory_bound_bytes"].as_u64().unwrap(),
    );
    assert!(b < a && b > 0, "{a} {b}");
    default_bound.stop();
    small.stop();
}

/// The value and source `config show` gives for `key`.
fn value_and_source(v: &Value, key: &str) -> (Value, String) {
    let s = setting(v, key);
    (
        s["value"].clone(),
        s["source"].as_str().unwrap().to_string(),
    )
}

#[test]
fn show_gives_each_level_precedence_over_the_lower_ones() {
    let p = pair_knowing(false, false);
    let h = &p.receiver;
    let keys = [
        (
            "transfer.relay_wait_secs",
            "CONDUIT_RELAY_WAIT",
            "10",
            "30",
            "45",
        ),
        (
            "audit.names",
            "CONDUIT_AUDIT_NAMES",
            "plain",
            "hash",
            "plain",
        ),
        (
            "audit.rotate_bytes",
            "CONDUIT_AUDIT_ROTATE_BYTES",
            "16777216",
            "4096",
            "8192",
        ),
    ];
    // Defaults.
    let v = show(h, &[]);
    for (key, _, default, _, _) in keys {
        assert_eq!(
            value_and_source(&v, key),
            (default.into(), "default".into())
        );
    }
    assert_eq!(
        value_and_source(&v, "transfer.relay"),
        (Value::Null, "default".into())
    );
    // The file beats the defaults.
    write_config(
        h,
        "[transfer]\nrelay_wait_secs = 30\nrelay = \"relay.example:7471\"\nrelay_ca = \"ca.pem\"\n\n[audit]\nnames = \"hash\"\nrotate_bytes = 4096\n",
    );
    let v = show(h, &[]);
    for (key, _, _, file, _) in keys {
        assert_eq!(value_and_source(&v, key), (file.into(), "file".into()));
    }
    assert_eq!(
        value_and_source(&v, "transfer.relay_ca"),
        ("ca.pem".into(), "file".into())
    );
    // The environment beats the file.
    let envs: Vec<(&str, &str)> = keys.iter().map(|k| (k.1, k.4)).collect();
    let v = show(h, &envs);
    for (key, _, _, _, env) in keys {
        assert_eq!(value_and_source(&v, key), (env.into(), "env".into()));
    }
    // A pin in the environment replaces the file's CA: the two come as a pair from one
    // level, as a transfer uses them.
    let pin = "ab".repeat(32);
    let v = show(h, &[("CONDUIT_RELAY_PIN", &pin)]);
    assert_eq!(
        value_and_source(&v, "transfer.relay_pin"),
        (pin.as_str().into(), "env".into())
    );
    assert_eq!(
        value_and_source(&v, "transfer.relay_ca"),
        (Value::Null, "default".into())
    );
    assert_eq!(
        value_and_source(&v, "transfer.relay"),
        ("relay.example:7471".into(), "file".into())
    );
    // For people: the variable is named, the value typed (a number is not quoted).
    let out = conduit(h)
        .args(["config", "show"])
        .env("CONDUIT_RELAY_WAIT", "45")
        .output()
        .unwrap();
    let t = text(&out.stdout);
    assert!(
        t.lines().any(|l| l.starts_with("transfer.relay_wait_secs")
            && l.contains("= 45 ")
            && l.ends_with("# env CONDUIT_RELAY_WAIT")),
        "{t}"
    );
    // A variable that does not parse is a usage error naming it, for `config show` as
    // for the commands that use it.
    for args in [
        &["config", "show"][..],
        &["receive", "--listen", "127.0.0.1:0"][..],
    ] {
        let out = conduit(h)
            .args(args)
            .env("CONDUIT_AUDIT_ROTATE_BYTES", "lots")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains("CONDUIT_AUDIT_ROTATE_BYTES"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn in_a_transfer_a_flag_beats_the_environment_which_beats_the_file() {
    let p = pair_knowing(true, true);
    let out = p.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // The file: two entries at most, names in plain.
    write_config(
        &p.receiver,
        &format!(
            "[transfer]\nout = {:?}\nmax_entries = 2\noverwrite = true\n\n[audit]\nnames = \"plain\"\n",
            out.display().to_string()
        ),
    );
    let dir = p.root.join("Roe, Richard");
    std::fs::create_dir_all(&dir).unwrap();
    for n in ["a.txt", "b.txt", "c.txt"] {
        std::fs::write(dir.join(n), n).unwrap();
    }
    let send = |addr: &str| {
        conduit(&p.sender)
            .arg("send")
            .arg(&dir)
            .args(["--to", "lab", "--direct", addr])
            .output()
            .unwrap()
    };
    let log = || -> String {
        std::fs::read_dir(p.receiver.join("audit"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    };
    let receive = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = conduit(&p.receiver);
        cmd.args(["receive", "--json", "--listen", "127.0.0.1:0"])
            .args(extra)
            .envs(envs.iter().copied());
        Running::spawn(cmd)
    };
    // The file's max_entries refuses three files (exit 5 at the sender).
    let mut rx = receive(&[], &[]);
    let s = send(rx.first["addr"].as_str().unwrap());
    assert_eq!(s.status.code(), Some(5), "{}", text(&s.stderr));
    rx.finish();
    // The flag beats the file; the environment's names mode `hash` beats the file's
    // `plain`: no file name in the receiver's audit records.
    let hash = [("CONDUIT_AUDIT_NAMES", "hash")];
    let mut rx = receive(&["--max-entries", "3"], &hash);
    let s = send(rx.first["addr"].as_str().unwrap());
    assert!(s.status.success(), "{}", text(&s.stderr));
    assert!(rx.finish().0.success());
    assert!(out.join("Roe, Richard/c.txt").exists());
    assert!(!log().contains("Roe"), "{}", log());
    // The flag beats the environment.
    let mut rx = receive(&["--max-entries", "3", "--audit-names", "plain"], &hash);
    let s = send(rx.first["addr"].as_str().unwrap());
    assert!(s.status.success(), "{}", text(&s.stderr));
    assert!(rx.finish().0.success());
    assert!(log().contains("Roe, Richard"), "{}", log());
}

#[test]
fn show_prints_typed_toml_that_loads_as_the_same_configuration() {
    let p = pair_knowing(false, false);
    let (a, b) = (&p.receiver, &p.sender);
    write_config(
        a,
        "[transfer]\nout = \"/srv/in \\\"box\\\" \\\\ x\"\nrelay = \"relay.example.org:7471\"\noverwrite = true\nmax_sessions = 3\n\n[audit]\nnames = \"hash\"\n\n[relay.limits]\nmax_strikes = 5\n",
    );
    let shown = conduit(a)
        .args(["config", "show"])
        .env("CONDUIT_RELAY_WAIT", "45")
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let toml = text(&shown.stdout);
    assert!(
        toml.lines()
            .any(|l| l.starts_with("transfer.overwrite ") && l.contains("= true ")),
        "{toml}"
    );
    // Pasted as another home's conduit.toml: the same values, now all from the file.
    write_config(b, &toml);
    let (before, after) = (show(a, &[("CONDUIT_RELAY_WAIT", "45")]), show(b, &[]));
    let rows = |v: &Value| v["settings"].as_array().unwrap().clone();
    for (x, y) in rows(&before).iter().zip(rows(&after).iter()) {
        assert_eq!((&x["key"], &x["value"]), (&y["key"], &y["value"]));
        let expected = if y["value"].is_null() {
            "default"
        } else {
            "file"
        };
        assert_eq!(y["source"], expected, "{y}");
    }
    assert_eq!(
        setting(&after, "transfer.out")["value"],
        "/srv/in \"box\" \\ x"
    );
    // And `config set` edits that file in place.
    let set = conduit(b)
        .args(["config", "set", "transfer.max_sessions", "4"])
        .output()
        .unwrap();
    assert!(set.status.success(), "{}", text(&set.stderr));
    let v = show(b, &[]);
    assert_eq!(setting(&v, "transfer.max_sessions")["value"], "4");
    assert_eq!(setting(&v, "relay.limits.max_strikes")["value"], "5");
    let text_now = std::fs::read_to_string(b.join("conduit.toml")).unwrap();
    assert!(
        text_now.contains("# default"),
        "the comments stay: {text_now}"
    );
}
