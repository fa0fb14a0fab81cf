//! `conduit relay`: run a relay in conduit mode.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args};
use serde_json::{Value, json};

use crate::config::{Config, Environment, FileConfig, Resolved};
use crate::home::Home;
use crate::relay::config::{FileLimits, Limits};
use crate::relay::server::{Logger, Relay};
use crate::relay::summary::Summary;
use crate::relay::tokens::Tokens;
use crate::transport::ServerTls;

/// Options of `relay`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("tls").required(true).args(["cert", "dev_self_signed"])))]
pub struct RelayArgs {
    /// Address to listen on (UDP), e.g. 0.0.0.0:7471.
    #[arg(long)]
    listen: SocketAddr,
    /// The relay's certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Make a throw-away self-signed certificate in memory and print its SHA-256 for
    /// clients' --relay-pin. For development only.
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    dev_self_signed: bool,
    /// Require an access token: a file of SHA-256 hashes of the accepted tokens, one per
    /// line (`printf %s TOKEN | sha256sum`).
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Serve Prometheus /metrics and /healthz over HTTP on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Read limits from this TOML file (section [limits]); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log JSON lines (the first is the `listening` event).
    #[arg(long)]
    json: bool,
    /// Debug level: log each refusal as it happens (a connector retrying while its
    /// listener is not there yet is one per attempt). Without it, refusals are counted
    /// and logged as one `summary` line a minute with a count per reason.
    #[arg(short, long)]
    verbose: bool,
    /// Seconds between two summaries of refusals (tests shorten it).
    #[arg(long, value_name = "SECS", default_value_t = 60, hide = true,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    log_summary_secs: u64,
    /// Sessions (paired clients, switched or spliced) at once [default: 256].
    #[arg(long, value_name = "N")]
    max_sessions: Option<usize>,
    /// Connections at once, waiting or in a session [default: 2048].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Clients waiting for a peer per source address [default: 32].
    #[arg(long, value_name = "N")]
    max_waiting_per_ip: Option<usize>,
    /// Sessions at once with an end at one source (IPv4 address, IPv6 /64), counted
    /// against both ends' sources [default: 8].
    #[arg(long, value_name = "N")]
    max_sessions_per_source: Option<usize>,
    /// Strikes (guess-like refusals, code nameplates spent) a source may collect per
    /// strike window before it is refused until the window ends [default: 30].
    #[arg(long, value_name = "N")]
    max_strikes: Option<u32>,
    /// Seconds of the strike window, from a source's first strike (at most 86400)
    /// [default: 600].
    #[arg(long, value_name = "SECS")]
    strike_window: Option<u64>,
    /// Seconds a client waits for its peer [default: 300].
    #[arg(long, value_name = "SECS")]
    pairing_timeout: Option<u64>,
    /// Seconds of silence before a connection is closed [default: 30].
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// Seconds a new client has to send its Hello [default: 10].
    #[arg(long, value_name = "SECS")]
    hello_timeout: Option<u64>,
    /// Seconds running sessions get to finish after SIGTERM [default: 30].
    #[arg(long, value_name = "SECS")]
    drain_timeout: Option<u64>,
}

impl RelayArgs {
    /// The limits of the resolved configuration: defaults, then `--config FILE` (or else
    /// the home's conduit.toml `[relay.limits]`), then flags.
    fn limits(&self, home: Option<&Home>) -> anyhow::Result<Limits> {
        let mut config = match (&self.config, home) {
            (None, Some(home)) => Config::load(home)?,
            _ => Config::default(),
        };
        if let Some(path) = &self.config {
            config.file.relay.limits = Some(FileLimits::load(path)?);
        }
        let mut flags = FileConfig::default();
        flags.relay.limits = Some(FileLimits {
            max_sessions: self.max_sessions,
            max_connections: self.max_connections,
            max_waiting_per_ip: self.max_waiting_per_ip,
            max_sessions_per_source: self.max_sessions_per_source,
            max_strikes: self.max_strikes,
            strike_window_secs: self.strike_window,
            pairing_timeout_secs: self.pairing_timeout,
            idle_timeout_secs: self.idle_timeout,
            hello_timeout_secs: self.hello_timeout,
            drain_timeout_secs: self.drain_timeout,
            ..FileLimits::default()
        });
        // The relay takes no setting from the environment: a transfer variable set on
        // its host (and perhaps not valid) is none of its business.
        let resolved = Resolved::resolve(&config, &Environment::default(), &flags)?;
        Ok(resolved.relay_limits()?)
    }
}

/// Prints one log event: a JSON line, or `event key=value ...` for people (an object's
/// entries as `key.inner=value`). A log that can no longer be written (its reader went
/// away: a closed pipe) loses the line; the relay goes on serving.
fn logger(json: bool) -> Logger {
    Arc::new(move |v: Value| {
        use std::io::Write;
        let line = if json { v.to_string() } else { human(&v) };
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    })
}

/// `event key=value ...`: the event's name, then its other fields in order.
fn human(v: &Value) -> String {
    let event = v.get("event").and_then(Value::as_str).unwrap_or("log");
    let mut line = event.to_string();
    if let Some(map) = v.as_object() {
        for (k, val) in map.iter().filter(|(k, _)| k.as_str() != "event") {
            match val.as_object() {
                Some(inner) => {
                    for (ik, iv) in inner {
                        line.push_str(&format!(" {k}.{ik}={iv}"));
                    }
                }
                None => line.push_str(&format!(" {k}={val}")),
            }
        }
    }
    line
}

pub(crate) fn run(args: RelayArgs, home: Option<Home>) -> anyhow::Result<()> {
    let limits = args.limits(home.as_ref())?;
    let tokens = args.tokens.as_deref().map(Tokens::load).transpose()?;
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => ServerTls::from_pem_files(cert, key)?,
        _ => {
            eprintln!(
                "WARNING: --dev-self-signed: this relay uses a throw-away certificate that no \
                 client can verify except by its pin. Use --cert/--key (see certs/README.md) \
                 for anything but development."
            );
            ServerTls::self_signed(&["localhost", "127.0.0.1", "::1"])?
        }
    };
    let pin: String = tls.pin().iter().map(|b| format!("{b:02x}")).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let log = logger(args.json);
        // Refusals are counted and summarised (each one logged only with --verbose).
        let summary = Summary::new(Arc::clone(&log), args.verbose);
        let relay = Relay::bind(args.listen, tls, limits, tokens, summary.logger())?;
        let addr = relay.local_addr()?;
        let metrics_addr = match args.metrics {
            Some(m) => {
                let listener = tokio::net::TcpListener::bind(m)
                    .await
                    .with_context(|| format!("metrics listener on {m}"))?;
                let bound = listener.local_addr()?;
                tokio::spawn(crate::relay::metrics::serve(listener, relay.metrics()));
                Some(bound.to_string())
            }
            None => None,
        };
        // SIGTERM is handled from the moment the relay says it is listening.
        let stop = crate::cli::transfer::shutdown_signal();
        log(json!({
            "event": "listening",
            "addr": addr.to_string(),
            "cert_sha256": pin,
            "metrics": metrics_addr,
            "tokens_required": args.tokens.is_some(),
            "memory_bound_bytes": limits.memory_bound(),
        }));
        let period = Duration::from_secs(args.log_summary_secs);
        let ticker = tokio::spawn(Arc::clone(&summary).every(period));
        relay.run(stop).await;
        ticker.abort();
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_reads_as_one_line_of_counts() {
        let v = json!({"event": "summary", "seconds": 60, "refused": {"no_listener": 41, "pairing_timeout": 1}, "total": 42});
        assert_eq!(
            human(&v),
            "summary refused.no_listener=41 refused.pairing_timeout=1 seconds=60 total=42"
        );
    }
}
