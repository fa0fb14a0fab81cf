//! The relay's log: at the default level refusals are counted and logged as a few
//! `summary` lines with a count per reason (issue #20, defect 12: a line per retry, 41 in
//! 10 s, drowned the rest); at the debug level (`--verbose`) each one is a line too.

use crate::common;

use common::{Relay, pair_knowing, send_via, start_relay, start_relay_summarising, text};

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `senders` senders to a receiver that is not at the relay, each retrying (`no_listener`)
/// for `secs` seconds, all at once.
fn retry_against(relay: &Relay, senders: usize, secs: &str) {
    let p = pair_knowing(true, false);
    let src = p.root.join("a.txt");
    std::fs::write(&src, b"nobody is waiting").unwrap();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..senders)
            .map(|_| {
                s.spawn(|| send_via(&p, relay, &[&src], &["--to", "lab", "--relay-wait", secs]))
            })
            .collect();
        for run in runs {
            let out = run.join().unwrap();
            assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
            assert!(
                text(&out.stderr).contains("no peer is waiting at the relay"),
                "{}",
                text(&out.stderr)
            );
        }
    });
}

/// The `no_listener` counts of the log's `summary` lines, one per line.
fn summarised(log: &[serde_json::Value]) -> Vec<u64> {
    log.iter()
        .filter(|e| e["event"] == "summary")
        .map(|e| e["refused"]["no_listener"].as_u64().unwrap_or(0))
        .collect()
}

#[test]
fn retries_make_a_few_summary_lines_whose_counts_add_up() {
    let relay = start_relay_summarising(&["--log-summary-secs", "3", "--metrics", "127.0.0.1:0"]);
    let metrics = relay.run.first["metrics"].as_str().unwrap().to_string();
    // Four senders retrying about four times a second for 4 s: some 40 to 60 refusals.
    retry_against(&relay, 4, "4");
    let text = http_get(&metrics, "/metrics");
    let refused: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("conduit_relay_rejections_total{reason=\"no_listener\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused >= 30, "only {refused} retries");
    let (status, log, _) = relay.stop();
    assert!(status.success());
    assert_eq!(
        log.iter().filter(|e| e["event"] == "refused").count(),
        0,
        "a line per retry at the default level: {log:?}"
    );
    // A summary every 3 s of the retries, and the last at the stop.
    let counts = summarised(&log);
    assert!(
        (1..=4).contains(&counts.len()),
        "{} summary lines: {log:?}",
        counts.len()
    );
    assert_eq!(counts.iter().sum::<u64>(), refused, "{log:?}");
    // Everything the relay said: the summaries, draining and stopped.
    assert!(log.len() <= 6, "{log:?}");
}

#[test]
fn verbose_logs_each_retry_and_the_summaries_count_them() {
    let relay = start_relay(&["--log-summary-secs", "1"]);
    retry_against(&relay, 1, "1");
    let (status, log, _) = relay.stop();
    assert!(status.success());
    let each = log
        .iter()
        .filter(|e| e["event"] == "refused" && e["reason"] == "no_listener")
        .count();
    assert!(each >= 2, "{log:?}");
    assert_eq!(summarised(&log).iter().sum::<u64>(), each as u64, "{log:?}");
}
