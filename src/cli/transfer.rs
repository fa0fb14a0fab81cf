//! `conduit send` and `conduit receive`, direct or through a relay (`--relay`), and the
//! receiving daemon (`receive --daemon`, at a relay or listening directly).
//!
//! A direct receiver authenticates each connection in its own task, so a peer that
//! connects and says nothing costs one pending slot until its handshake timeout, never
//! the receiver: a one-shot receiver keeps waiting for its real sender, a daemon serves
//! others meanwhile (bounded: transfers at once, pending handshakes, connections per IP).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::audit::names::Names;
use crate::audit::{Audit, NameMode, Role as AuditRole};
use crate::cli::AuditNames;
use crate::cli::{Redacted, Usage};
use crate::config::{FileConfig, Resolved, TransferFile};
use crate::crypto::identity::Identity;
use crate::crypto::pake::Code;
use crate::crypto::pipeline::CipherPool;
use crate::crypto::stream::{ChunkSize, DEFAULT_CHUNK_SIZE};
use crate::home::Home;
use crate::peers::AddressBook;
use crate::relay::client::{self as relay_client, RelayOptions};
use crate::relay::hello::Role;
use crate::relay::tokens::parse_sha256;
use crate::session::{SessionError, Stage, Timeouts};
use crate::transfer::dest::Destination;
use std::io::IsTerminal;

use crate::transfer::run::{
    self, Confirm, Event, Events, ReceivePolicy, Recipient, Summary, TransferError,
};
use crate::transfer::source;
use crate::transport::{self, RelayTrust};

/// Options of `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Files and directories to send.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The recipient, by its name in the address book.
    #[arg(long, required_unless_present = "code", conflicts_with = "code")]
    to: Option<String>,
    /// Make a one-time code phrase instead, print it and wait for the receiver
    /// (`conduit receive --code CODE`).
    #[arg(long)]
    code: bool,
    /// After a code-phrase transfer, save the receiver's key under this name.
    #[arg(long, requires = "code", value_name = "NAME")]
    save_peer: Option<String>,
    /// The receiver's address (it runs `conduit receive --listen`); takes precedence over
    /// `--relay`, CONDUIT_RELAY or a relay in conduit.toml.
    #[arg(long)]
    direct: Option<SocketAddr>,
    #[command(flatten)]
    relay: RelayFlags,
    /// STREAM chunk size in bytes.
    #[arg(long, default_value_t = u64::from(DEFAULT_CHUNK_SIZE.get()))]
    chunk_size: u64,
    /// Print events and the summary as JSON lines.
    #[arg(long)]
    json: bool,
    /// Print only errors and the summary.
    #[arg(long, conflicts_with = "json")]
    quiet: bool,
    /// How file names appear in this endpoint's audit records and in what it prints
    /// (hash: no file name on stdout or stderr) [default: plain].
    #[arg(long, value_enum, value_name = "MODE", env = "CONDUIT_AUDIT_NAMES")]
    audit_names: Option<AuditNames>,
    #[command(flatten)]
    timeouts: TimeoutFlags,
}

/// How long to wait for the peer at each step (docs/PROTOCOL.md, "Timeouts"); each
/// also `*_timeout_secs` in conduit.toml's `[transfer]`.
#[derive(Debug, Args)]
pub(crate) struct TimeoutFlags {
    /// Seconds from connecting to an authenticated session [default: 10].
    #[arg(long, value_name = "SECS")]
    handshake_timeout: Option<u64>,
    /// Seconds the receiver waits for the whole offer once the sender is authenticated
    /// [default: 30].
    #[arg(long, value_name = "SECS")]
    offer_timeout: Option<u64>,
    /// Seconds the sender waits for the receiver's answer to its offer, and for the
    /// receipt [default: 120].
    #[arg(long, value_name = "SECS")]
    answer_timeout: Option<u64>,
    /// Seconds the receiver waits for a file stream's 16-byte header [default: 10].
    #[arg(long, value_name = "SECS")]
    header_timeout: Option<u64>,
    /// Seconds without a packet from the peer before the connection is closed (keep-alives
    /// go out at a third of it, so only a vanished peer falls silent) [default: 10].
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
}

impl TimeoutFlags {
    /// The flags given, into the command line's configuration layer.
    fn layer(&self, t: &mut TransferFile) {
        t.handshake_timeout_secs = self.handshake_timeout;
        t.offer_timeout_secs = self.offer_timeout;
        t.answer_timeout_secs = self.answer_timeout;
        t.header_timeout_secs = self.header_timeout;
        t.idle_timeout_secs = self.idle_timeout;
    }
}

/// The timeouts of the resolved configuration. Zero is refused.
fn timeouts(r: &Resolved) -> anyhow::Result<Timeouts> {
    let pick = |secs: u64, name: &str| match secs {
        0 => Err(Usage(format!("--{name}: at least 1 second"))),
        secs => Ok(Duration::from_secs(secs)),
    };
    Ok(Timeouts {
        handshake: pick(r.handshake_timeout_secs.value, "handshake-timeout")?,
        offer: pick(r.offer_timeout_secs.value, "offer-timeout")?,
        answer: pick(r.answer_timeout_secs.value, "answer-timeout")?,
        header: pick(r.header_timeout_secs.value, "header-timeout")?,
        idle: pick(r.idle_timeout_secs.value, "idle-timeout")?,
    })
}

/// Whether the value of argument `id` came from its environment variable (clap reads
/// it, for `--help` and for checking it), not from the command line.
fn from_env(m: &clap::ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(clap::parser::ValueSource::EnvVariable)
}

impl SendArgs {
    /// Forgets the values clap took from environment variables: they are the
    /// environment's layer of the configuration ([`Resolved`]), not flags.
    pub(crate) fn drop_env_values(&mut self, m: &clap::ArgMatches) {
        self.relay.drop_env_values(m);
        if from_env(m, "audit_names") {
            self.audit_names = None;
        }
    }

    /// The flags given, as the command line's configuration layer.
    fn flags(&self) -> FileConfig {
        let mut layer = FileConfig::default();
        self.relay.layer(&mut layer.transfer);
        self.timeouts.layer(&mut layer.transfer);
        layer.audit.names = self.audit_names.map(NameMode::from);
        layer
    }
}

impl ReceiveArgs {
    /// Forgets the values clap took from environment variables (see
    /// [`SendArgs::drop_env_values`]).
    pub(crate) fn drop_env_values(&mut self, m: &clap::ArgMatches) {
        self.relay.drop_env_values(m);
        if from_env(m, "audit_names") {
            self.audit_names = None;
        }
        if from_env(m, "out") {
            self.out = None;
        }
    }

    /// The flags given, as the command line's configuration layer.
    fn flags(&self) -> FileConfig {
        let mut layer = FileConfig::default();
        let t = &mut layer.transfer;
        self.relay.layer(t);
        self.timeouts.layer(t);
        t.out = self.out.clone();
        t.accept_unknown = self.accept_unknown.then_some(true);
        t.auto_accept = self.yes.then_some(true);
        t.overwrite = self.overwrite.then_some(true);
        t.keep_modes = self.keep_modes.then_some(true);
        t.part_max_age_days = self.part_max_age_days;
        t.max_entries = self.max_entries;
        t.max_sessions = self.concurrent;
        t.max_sessions_per_ip = self.max_per_ip;
        layer.audit.names = self.audit_names.map(NameMode::from);
        layer
    }
}

/// Options of `receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Address to listen on for a direct sender, e.g. 0.0.0.0:7470 (port 0: any; the
    /// chosen address is printed); takes precedence over `--relay`, CONDUIT_RELAY or a
    /// relay in conduit.toml.
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    relay: RelayFlags,
    /// Keep receiving transfers (known peers) until Ctrl-C or SIGTERM: at the relay
    /// (reconnecting with backoff if it goes away), or on the `--listen` address.
    #[arg(long, conflicts_with = "code")]
    daemon: bool,
    /// With --daemon: transfers received at once [default: 1, or max_sessions in
    /// conduit.toml].
    #[arg(long, requires = "daemon", value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrent: Option<u16>,
    /// With --listen: connections at once from one IP address, authenticated or not
    /// [default: 4, or max_sessions_per_ip in conduit.toml].
    #[arg(long, requires = "listen", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    max_per_ip: Option<u16>,
    /// Destination directory [default: .].
    #[arg(long, env = "CONDUIT_OUT")]
    out: Option<PathBuf>,
    /// Accept the offer without asking (otherwise only known peers' offers are accepted).
    #[arg(long)]
    yes: bool,
    /// Let senders that are not in the address book complete the handshake.
    #[arg(long)]
    accept_unknown: bool,
    /// Replace files that already exist.
    #[arg(long)]
    overwrite: bool,
    /// Keep the owner's execute bit of the sender's files (received files are otherwise
    /// 0600, directories 0700; never setuid, setgid or sticky).
    #[arg(long)]
    keep_modes: bool,
    /// Remove this user's leftover partial files older than this many days from the
    /// destination at start (and once a day with --daemon), each with an audit record; 0
    /// keeps them [default: 7].
    #[arg(long, value_name = "DAYS")]
    part_max_age_days: Option<u32>,
    /// Most entries (files and empty directories) accepted in one offer; larger offers
    /// are refused before their list is read [default: 250000; at most 1000000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_entries: Option<u64>,
    /// Authenticate the sender with the code phrase it printed. Without a value the code
    /// is asked for (hidden, like a password) or read as one line from standard input when
    /// that is not a terminal; a value given here is visible to other local users (`ps`).
    #[arg(long, value_name = "CODE", num_args = 0..=1)]
    code: Option<Option<String>>,
    /// After a code-phrase transfer, save the sender's key under this name.
    #[arg(long, requires = "code", value_name = "NAME")]
    save_peer: Option<String>,
    /// Print events and the summary as JSON lines.
    #[arg(long)]
    json: bool,
    /// Print only errors and the summary.
    #[arg(long, conflicts_with = "json")]
    quiet: bool,
    /// How file names appear in this endpoint's audit records and in what it prints
    /// (hash: no file name on stdout, stderr or the journal) [default: plain; hash with
    /// --daemon].
    #[arg(long, value_enum, value_name = "MODE", env = "CONDUIT_AUDIT_NAMES")]
    audit_names: Option<AuditNames>,
    #[command(flatten)]
    timeouts: TimeoutFlags,
}

/// How to reach a relay (send and receive).
#[derive(Debug, Args)]
pub(crate) struct RelayFlags {
    /// Meet the peer at a relay: HOST:PORT, or a comma-separated fleet (both peers pick the
    /// same relay by rendezvous hashing).
    #[arg(long, value_name = "ADDRS", env = "CONDUIT_RELAY")]
    relay: Option<String>,
    /// Verify the relay's certificate against this CA (PEM) instead of the system roots.
    #[arg(
        long,
        value_name = "FILE",
        env = "CONDUIT_RELAY_CA",
        conflicts_with = "relay_pin"
    )]
    relay_ca: Option<PathBuf>,
    /// Accept only the relay certificate with this SHA-256 (hex, as the relay prints it).
    #[arg(long, value_name = "SHA256", env = "CONDUIT_RELAY_PIN")]
    relay_pin: Option<String>,
    /// Access token the relay asks for.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CONDUIT_RELAY_TOKEN",
        hide_env_values = true
    )]
    relay_token: Option<String>,
    /// Seconds to keep trying while the peer is not (yet) waiting at the relay [default: 10].
    #[arg(long, value_name = "SECS", env = "CONDUIT_RELAY_WAIT")]
    relay_wait: Option<u64>,
}

impl RelayFlags {
    /// Forgets the values clap took from environment variables (see
    /// [`SendArgs::drop_env_values`]); the token is not a configuration key and stays.
    fn drop_env_values(&mut self, m: &clap::ArgMatches) {
        if from_env(m, "relay") {
            self.relay = None;
        }
        if from_env(m, "relay_ca") {
            self.relay_ca = None;
        }
        if from_env(m, "relay_pin") {
            self.relay_pin = None;
        }
        if from_env(m, "relay_wait") {
            self.relay_wait = None;
        }
    }

    /// The flags given, into the command line's configuration layer.
    fn layer(&self, t: &mut TransferFile) {
        t.relay = self.relay.clone();
        t.relay_ca = self.relay_ca.clone();
        t.relay_pin = self.relay_pin.clone();
        t.relay_wait_secs = self.relay_wait;
    }

    /// The relay options of the resolved configuration (with the token given here);
    /// `None` without a relay.
    fn options(&self, r: &Resolved) -> anyhow::Result<Option<RelayOptions>> {
        let Some(list) = r.relay.value.as_ref() else {
            return Ok(None);
        };
        let relays = RelayOptions::parse_list(list)?;
        // The pin and the CA come as a pair from one layer (see `Resolved::relay_pin`).
        let (pin, ca) = (r.relay_pin.value.as_ref(), r.relay_ca.value.as_ref());
        let trust = match (pin, ca) {
            (Some(pin), _) => RelayTrust::Pin(
                parse_sha256(pin).context("relay pin: expected a SHA-256 in hex (64 digits)")?,
            ),
            (None, Some(ca)) => RelayTrust::ca_file(ca)?,
            (None, None) => RelayTrust::System,
        };
        let token = self.relay_token.clone().unwrap_or_default().into_bytes();
        if token.len() > crate::relay::hello::MAX_TOKEN {
            anyhow::bail!(
                "--relay-token: at most {} bytes",
                crate::relay::hello::MAX_TOKEN
            );
        }
        Ok(Some(RelayOptions {
            relays,
            trust,
            token,
            wait: Duration::from_secs(r.relay_wait_secs.value),
        }))
    }
}

/// The relay to meet the peer at, unless an address was given (`flag`, which takes
/// precedence); neither is a usage error.
fn relay_unless_direct(
    verb: &str,
    flag: &str,
    addr: Option<SocketAddr>,
    relay: &RelayFlags,
    config: &Resolved,
) -> anyhow::Result<Option<RelayOptions>> {
    if addr.is_some() {
        return Ok(None);
    }
    match relay.options(config)? {
        Some(opts) => Ok(Some(opts)),
        None => Err(Usage(format!(
            "{verb} needs {flag} ADDR or --relay ADDRS (or CONDUIT_RELAY, or relay in conduit.toml)"
        ))
        .into()),
    }
}

/// The user stopped a transfer (Ctrl-C or SIGTERM); exit code 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted: partial files stay at the receiver; run the same commands again to resume")]
pub(crate) struct Interrupted;

/// How long a code-phrase sender keeps trying to reach the receiver.
const CODE_WAIT: Duration = Duration::from_secs(300);
/// One connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn send(home: &Home, args: SendArgs) -> anyhow::Result<()> {
    let identity = Identity::load(home)?;
    let book = AddressBook::load(home)?;
    let config = crate::cli::resolve(home, &args.flags())?;
    let audit = Audit::open(home, &identity, &book, config.audit_options(false));
    let rec = audit.session(AuditRole::Send);
    // Names mode hash: the names on the command line and those sent are shown hashed,
    // in error messages too.
    let names = rec.names().clone();
    let given: Vec<String> = args
        .paths
        .iter()
        .flat_map(|p| {
            let whole = p.to_string_lossy().into_owned();
            let last = p.file_name().map(|n| n.to_string_lossy().into_owned());
            std::iter::once(whole).chain(last)
        })
        .collect();
    names.learn(given.iter().map(String::as_str));
    send_recorded(args, identity, book, &config, rec).map_err(|e| Redacted::hide(&names, e))
}

/// `send` once the audit session exists.
fn send_recorded(
    args: SendArgs,
    identity: Identity,
    mut book: AddressBook,
    config: &Resolved,
    rec: crate::audit::SessionAudit,
) -> anyhow::Result<()> {
    let names = rec.names().clone();
    let recipient = match &args.to {
        Some(name) => Recipient::Known(
            book.find_by_name(name)
                .with_context(|| format!("no peer named {name:?} in the address book"))?
                .key,
        ),
        None => {
            let code = Code::generate()?;
            if args.json {
                println!("{}", json!({"event": "code", "code": code.to_string()}));
            } else {
                println!("code: {code}");
                println!(
                    "on the receiving side run: conduit receive --listen ADDR --code (and type the code when asked)"
                );
            }
            Recipient::Code(code)
        }
    };
    let chunk = ChunkSize::new(args.chunk_size)?;
    let source::Collected {
        files,
        dirs,
        skipped,
    } = source::collect_with_dirs(&args.paths).map_err(|e| source_error_shown(&names, e))?;
    names.learn(
        files
            .iter()
            .map(|f| f.rel.as_str())
            .chain(dirs.iter().map(|d| d.as_str())),
    );
    for s in skipped {
        let shown = if names.hides() {
            names.tag(&s.to_string_lossy())
        } else {
            crate::transfer::paths::escape(&s.to_string_lossy())
        };
        eprintln!("warning: skipped symlink {shown}");
    }
    let timeouts = timeouts(config)?;
    let relay = relay_unless_direct("send", "--direct", args.direct, &args.relay, config)?;
    let rt = runtime()?;
    let summary = rt.block_on(async {
        let (endpoint, conn) = match (&relay, args.direct) {
            (Some(opts), _) => {
                // Known recipient: the receiver waits at the relay and we join it. Code:
                // we printed the code and wait; the receiver joins us, once.
                let (role, single_use, rendezvous) = match &recipient {
                    Recipient::Known(key) => (Role::Connect, false, run::rendezvous_for(key)),
                    Recipient::Code(code) => (Role::Listen, true, run::rendezvous_for_code(code)),
                };
                let j = relay_client::join(opts, role, single_use, rendezvous).await?;
                (j.endpoint, j.connection)
            }
            (None, Some(addr)) => {
                let endpoint = transport::direct_client_with(addr, timeouts.idle)?;
                let conn =
                    connect(&endpoint, addr, matches!(recipient, Recipient::Code(_))).await?;
                (endpoint, conn)
            }
            (None, None) => anyhow::bail!("--direct or --relay is required"),
        };
        let pool = CipherPool::with_all_cores()?;
        let events = events(Output::of(args.json, args.quiet), &book, names.clone());
        let transfer = run::send_tree_recorded(
            &conn, &identity, &recipient, &files, &dirs, chunk, &pool, &events, &rec, &timeouts,
        );
        let result = tokio::select! {
            r = transfer => r,
            () = shutdown_signal() => {
                conn.close(run::CLOSE_CANCELLED.into(), b"cancelled");
                record_interruption(&rec).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
                return Err(Interrupted.into());
            }
        };
        if let Err(e) = &result {
            conn.close(e.close_code().into(), b"error");
        }
        endpoint.wait_idle().await;
        anyhow::Ok(result.map_err(|e| refused_by(e, args.to.as_deref()))?)
    })?;
    report("sent", &summary, args.json, &names);
    if let Some(name) = &args.save_peer {
        save_peer(&mut book, name, &summary)?;
    }
    Ok(())
}

/// The receiver refused the offer (exit code 5): who, what it said and what to do next,
/// as one sentence.
#[derive(Debug, thiserror::Error)]
#[error("{who} refused: {sentence}")]
pub(crate) struct RefusedBy {
    /// The receiver's name in the address book, or "the receiver".
    who: String,
    /// What it said, then the next step.
    sentence: String,
}

/// A sender's error, with a refusal (by the offer's answer, or by the handshake's abort
/// "unknown peer") turned into a [`RefusedBy`] sentence naming the receiver.
fn refused_by(e: run::TransferError, to: Option<&str>) -> anyhow::Error {
    use crate::crypto::handshake::{AbortReason, HandshakeError};
    let who = to.map_or_else(|| "the receiver".to_string(), str::to_string);
    let sentence = match (&e, e.handshake_error()) {
        (run::TransferError::Refused(r), _) => r.to_string(),
        // In clear before authentication: what the receiver (or anyone on the path) said.
        (_, Some(HandshakeError::PeerAborted(AbortReason::UnknownPeer))) => {
            crate::transfer::protocol::Refusal {
                code: crate::transfer::protocol::RefusalCode::UnknownSender,
                detail: None,
            }
            .to_string()
        }
        _ => return e.into(),
    };
    // The sentence says all the error did: one line, not two.
    anyhow::Error::new(RefusedBy { who, sentence })
}

/// Connects; in code mode the receiver may not be listening yet (its user types the code
/// after the sender printed it), so keep trying for [`CODE_WAIT`].
async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    wait: bool,
) -> anyhow::Result<quinn::Connection> {
    let deadline = tokio::time::Instant::now() + if wait { CODE_WAIT } else { Duration::ZERO };
    loop {
        let attempt =
            tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect(addr, "phi-conduit")?).await;
        match attempt {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("connecting to {addr}"));
            }
            Err(_) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("connecting to {addr}: timed out")
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Saves the peer of a finished code-phrase transfer. The transfer itself succeeded, so
/// a failure here (name or key already in the book) is a warning, not an error.
fn save_peer(book: &mut AddressBook, name: &str, summary: &Summary) -> anyhow::Result<()> {
    match book.add(name, summary.peer).and_then(|()| book.save()) {
        Ok(()) => println!("saved peer {name} ({})", summary.peer.fingerprint()),
        Err(e) => eprintln!("warning: peer not saved: {e}"),
    }
    Ok(())
}

pub(crate) fn receive(home: &Home, args: ReceiveArgs) -> anyhow::Result<()> {
    let identity = Identity::load(home)?;
    let book = AddressBook::load(home)?;
    let config = crate::cli::resolve(home, &args.flags())?;
    let audit = Audit::open(home, &identity, &book, config.audit_options(args.daemon));
    receive_audited(args, identity, book, &config, audit)
}

/// `receive` once the audit is open. Each connection has its own audit session; an
/// error is shown with that session's names hidden (names mode hash).
fn receive_audited(
    args: ReceiveArgs,
    identity: Identity,
    mut book: AddressBook,
    config: &Resolved,
    audit: Audit,
) -> anyhow::Result<()> {
    let out = config.out.value.clone();
    let dest = Destination::open(&out)?;
    let timeouts = timeouts(config)?;
    let code = match &args.code {
        None => None,
        Some(Some(text)) if !text.is_empty() => Some(Code::parse(text)?),
        // `--code` alone: ask for it, off the command line.
        Some(_) => Some(Code::parse(&crate::cli::prompt::read_secret("code: ")?)?),
    };
    // A person at a terminal is asked about each offer (unless --yes); scripts are not.
    let interactive = !args.json
        && !args.daemon
        && std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal();
    let sessions = if args.daemon {
        config.max_sessions.value.max(1)
    } else {
        1
    };
    let policy = ReceivePolicy {
        confirm: interactive.then(|| ask_at_terminal(&out)),
        code,
        accept_unknown: config.accept_unknown.value,
        yes: config.auto_accept.value,
        overwrite: config.overwrite.value,
        keep_modes: config.keep_modes.value,
        max_entries: Some(config.max_entries.value),
        timeouts,
        sessions: None,
    };
    let relay = relay_unless_direct("receive", "--listen", args.listen, &args.relay, config)?;
    let max_age_days = config.part_max_age_days.value;
    remove_stale_parts(&dest, &audit, max_age_days);
    let rt = runtime()?;
    let mut ctx = DaemonContext {
        identity,
        book: book.clone(),
        dest,
        policy,
        json: args.json,
        quiet: args.quiet,
        audit,
        max_age_days,
    };
    let received = match (args.listen, relay) {
        (Some(listen), _) => {
            let limits = DirectLimits {
                sessions: usize::from(sessions),
                per_ip: usize::from(config.max_sessions_per_ip.value.max(1)),
                pending: MAX_PENDING_HANDSHAKES,
            };
            ctx.policy.sessions = Some(Arc::new(tokio::sync::Semaphore::new(limits.sessions)));
            let daemon = args.daemon;
            let ctx = Arc::new(ctx);
            let served = rt.block_on(serve_direct(listen, Arc::clone(&ctx), limits, daemon));
            flush_suppressed(&rt, &ctx.audit);
            match served? {
                Some(s) => s,
                None => return Ok(()),
            }
        }
        (None, Some(opts)) if args.daemon => {
            return rt.block_on(daemon(Arc::new(ctx), opts, usize::from(sessions)));
        }
        (None, Some(opts)) => {
            let got = rt.block_on(receive_at_relay(&ctx, &opts));
            flush_suppressed(&rt, &ctx.audit);
            got?
        }
        (None, None) => anyhow::bail!("--listen or --relay is required"),
    };
    let (summary, names) = received;
    report("received", &summary, args.json, &names);
    if let Some(name) = &args.save_peer {
        save_peer(&mut book, name, &summary)?;
    }
    Ok(())
}

/// A one-shot receive at a relay: join, receive; a connection whose peer never
/// authenticates (a timeout, a failed handshake) does not use the receiver up: it joins
/// again and keeps waiting.
async fn receive_at_relay(
    ctx: &DaemonContext,
    opts: &RelayOptions,
) -> anyhow::Result<(Summary, Names)> {
    let (role, single_use, rendezvous) = match &ctx.policy.code {
        Some(code) => (Role::Connect, true, run::rendezvous_for_code(code)),
        None => (
            Role::Listen,
            false,
            run::rendezvous_for(&ctx.identity.public()),
        ),
    };
    if ctx.json {
        println!(
            "{}",
            json!({"event": "joining", "relay": opts.choose(&rendezvous)?})
        );
    } else {
        println!("waiting at relay {}", opts.choose(&rendezvous)?);
    }
    let pool = CipherPool::with_all_cores()?;
    loop {
        // A key's listener proves it holds the key; a code's nameplate is joined.
        let j = if role == Role::Listen && !single_use {
            relay_client::listen(opts, &ctx.identity).await?
        } else {
            relay_client::join(opts, role, single_use, rendezvous).await?
        };
        let (rec, names, events) = ctx.session(ctx.quiet);
        let transfer = ctx.receive(&j.connection, &pool, &events, &rec);
        let shutdown = shutdown_signal();
        let result = tokio::select! {
            r = transfer => r,
            () = shutdown => {
                // The partial files and their resume records stay; the cipher threads
                // record the last chunks written as the connection goes.
                j.connection.close(run::CLOSE_CANCELLED.into(), b"cancelled");
                record_interruption(&rec).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), j.endpoint.wait_idle()).await;
                return Err(Interrupted.into());
            }
        };
        match result {
            Ok(summary) => {
                run::wait_for_sender_close(&j.connection).await;
                j.endpoint.wait_idle().await;
                return Ok((summary, names));
            }
            Err(e) => {
                close_after_error(&j.connection, &e).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), j.endpoint.wait_idle()).await;
                if !e.before_authentication() {
                    return Err(Redacted::hide(&names, e.into()));
                }
                notice(ctx.json, None, e, &names, true);
            }
        }
    }
}

/// Closes a connection that ended with `e`, with `e`'s close code. Unless the peer
/// timed out, it first lets the abort or refusal already queued reach the peer (it
/// closes when it has read it), for at most 2 s.
async fn close_after_error(conn: &quinn::Connection, e: &TransferError) {
    if !e.is_timeout() {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    }
    conn.close(e.close_code().into(), b"error");
}

/// What kind of failure `e` is, for the `error` event and the warning.
fn failure_kind(e: &TransferError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_unauthenticated_abort() {
        "unauthenticated_abort"
    } else if e.is_auth() {
        "auth_failed"
    } else if matches!(e, TransferError::Busy) {
        "busy"
    } else if matches!(e, TransferError::Refused(_)) {
        "refused"
    } else {
        "error"
    }
}

/// Reports a connection that failed while the receiver goes on (`still_waiting`: a
/// one-shot receiver that keeps waiting for its sender).
fn notice(
    json: bool,
    from: Option<SocketAddr>,
    e: TransferError,
    names: &Names,
    still_waiting: bool,
) {
    let kind = failure_kind(&e);
    // Names mode hash: the message shows no file name.
    let e = crate::cli::describe(&Redacted::hide(names, e.into()));
    if json {
        println!(
            "{}",
            json!({"event": "error", "kind": kind, "from": from.map(|a| a.to_string()), "message": e.to_string()})
        );
    } else {
        let from = from.map(|a| format!(" from {a}")).unwrap_or_default();
        let then = if still_waiting { "; still waiting" } else { "" };
        eprintln!("connection{from} failed ({kind}): {e}{then}");
    }
}

/// What every receiving connection shares (one-shot or daemon).
struct DaemonContext {
    identity: Identity,
    book: AddressBook,
    dest: Destination,
    policy: ReceivePolicy,
    json: bool,
    quiet: bool,
    audit: Audit,
    /// `--part-max-age-days`.
    max_age_days: u32,
}

impl DaemonContext {
    /// A new audit session for one connection, the names it hides (names mode hash) and
    /// the events it prints (`quiet`: only errors and the summary).
    fn session(&self, quiet: bool) -> (Arc<crate::audit::SessionAudit>, Names, Events) {
        let rec = Arc::new(self.audit.session(AuditRole::Receive));
        let names = rec.names().clone();
        let events = events(Output::of(self.json, quiet), &self.book, names.clone());
        (rec, names, events)
    }

    /// Receives one transfer over `conn`, recorded in `rec`.
    async fn receive(
        &self,
        conn: &quinn::Connection,
        pool: &Arc<CipherPool>,
        events: &Events,
        rec: &Arc<crate::audit::SessionAudit>,
    ) -> Result<Summary, TransferError> {
        run::receive_recorded(
            conn,
            &self.identity,
            &self.book,
            &self.dest,
            &self.policy,
            pool,
            events,
            rec,
        )
        .await
    }
}

/// Removes leftover partial files older than `days` (0: none) from `dest`, each with an
/// audit record, and says so on stderr; a failure is a warning.
fn remove_stale_parts(dest: &Destination, audit: &Audit, days: u32) {
    if days == 0 {
        return;
    }
    let max_age = Duration::from_secs(u64::from(days) * 24 * 3600);
    let removed = match dest.remove_stale(max_age) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warning: looking for old partial files: {e}");
            return;
        }
    };
    let reason = format!("partial file older than {days} days");
    // Names mode hash (the daemon's default): the name stays in the audit log only.
    let names = audit.names();
    for r in removed {
        eprintln!(
            "removed the partial file of {} ({} bytes): older than {days} days",
            if names.hides() {
                names.tag(&r.path)
            } else {
                crate::transfer::paths::escape(&r.path)
            },
            r.bytes
        );
        if let Err(e) = audit.partial_removed(&r.path, r.bytes, &reason) {
            eprintln!("warning: {e}");
        }
    }
}

/// Removes leftover partial files once a day (a daemon; at start `receive` already did).
fn spawn_daily_sweep(ctx: &Arc<DaemonContext>) -> tokio::task::JoinHandle<()> {
    let ctx = Arc::clone(ctx);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
            let ctx = Arc::clone(&ctx);
            let _ = tokio::task::spawn_blocking(move || {
                remove_stale_parts(&ctx.dest, &ctx.audit, ctx.max_age_days);
            })
            .await;
        }
    })
}

/// Writes the count of strangers' records the rate limit left out (a receive that
/// outlasted failed connections) before the process ends.
fn flush_suppressed(rt: &tokio::runtime::Runtime, audit: &Audit) {
    if let Err(e) = rt.block_on(audit.flush_suppressed()) {
        eprintln!("warning: {e}");
    }
}

/// Prints the audit chain's head to stderr (the journal under systemd), and as a JSON
/// event with `--json`: an anchor outside the log, so that cutting records off its end
/// is found by `conduit audit verify --expect-head HASH`.
async fn print_head(audit: &Audit, when: &str, json: bool) {
    match audit.head().await {
        Ok(Some((seq, head))) => {
            eprintln!(
                "audit head at daemon {when}: record {seq} {head} (check with: conduit audit verify --expect-head {head})"
            );
            if json {
                println!(
                    "{}",
                    json!({"event": "audit_head", "at": when, "record": seq, "head": head})
                );
            }
        }
        Ok(None) => eprintln!("audit head at daemon {when}: the log is empty"),
        Err(e) => eprintln!("warning: audit head at daemon {when} not read: {e}"),
    }
}

/// Connections a direct receiver authenticates at once, beyond those in a transfer.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = 32;

/// A direct receiver's limits.
#[derive(Debug, Clone, Copy)]
struct DirectLimits {
    /// Transfers at once.
    sessions: usize,
    /// Connections at once from one IP address, authenticated or not.
    per_ip: usize,
    /// Connections at once still in their handshake.
    pending: usize,
}

/// Listens on `listen` and serves each connection in its own task, within `limits` (a
/// connection over them is refused at once). A one-shot receiver (`daemon` false)
/// returns with the first transfer that gets past authentication, whatever its outcome;
/// connections whose peer never authenticates are reported and it keeps waiting. A daemon
/// serves until Ctrl-C or SIGTERM and returns `None`.
async fn serve_direct(
    listen: SocketAddr,
    ctx: Arc<DaemonContext>,
    limits: DirectLimits,
    daemon: bool,
) -> anyhow::Result<Option<(Summary, Names)>> {
    let endpoint = transport::direct_server_with(listen, ctx.policy.timeouts.idle)?;
    let addr = endpoint.local_addr()?;
    if ctx.json {
        println!(
            "{}",
            json!({"event": "listening", "addr": addr.to_string(), "daemon": daemon, "sessions": limits.sessions})
        );
    } else if daemon {
        println!(
            "listening on {addr} ({} at once); Ctrl-C to stop",
            limits.sessions
        );
    } else {
        println!("listening on {addr}");
    }
    let pool = CipherPool::with_all_cores()?;
    let sweeping = daemon.then(|| spawn_daily_sweep(&ctx));
    if daemon {
        print_head(&ctx.audit, "start", ctx.json).await;
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut tasks = tokio::task::JoinSet::new();
    let mut per_ip: std::collections::HashMap<IpAddr, usize> = std::collections::HashMap::new();
    let result = loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else {
                    break Err(anyhow::anyhow!("endpoint closed"));
                };
                let from = incoming.remote_address();
                let count = per_ip.entry(from.ip()).or_default();
                if *count >= limits.per_ip || tasks.len() >= limits.sessions + limits.pending {
                    // Refused before any state is kept for it.
                    incoming.refuse();
                    continue;
                }
                *count += 1;
                let (ctx, pool, stopping) = (Arc::clone(&ctx), Arc::clone(&pool), stopping.clone());
                tasks.spawn(async move {
                    (from, serve_connection(incoming, &ctx, &pool, stopping).await)
                });
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((from, result)) = done else { continue };
                if let Some(n) = per_ip.get_mut(&from.ip()) {
                    *n -= 1;
                    if *n == 0 {
                        per_ip.remove(&from.ip());
                    }
                }
                match result {
                    Ok(got) if !daemon => break Ok(Some(got)),
                    Ok((summary, names)) => report("received", &summary, ctx.json, &names),
                    Err(Served::Interrupted) => {}
                    Err(Served::Failed(e, names)) if !daemon && !e.before_authentication() => {
                        break Err(Redacted::hide(&names, e.into()));
                    }
                    Err(Served::Failed(e, names)) => notice(ctx.json, Some(from), e, &names, !daemon),
                }
            }
            () = &mut shutdown => {
                // Transfers close their connection and record the interruption.
                let _ = stop.send(true);
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                tasks.shutdown().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
                if let Some(s) = sweeping {
                    s.abort();
                }
                // A daemon stopping is its normal end; a one-shot receiver was interrupted.
                if daemon {
                    if let Err(e) = ctx.audit.flush_suppressed().await {
                        eprintln!("warning: {e}");
                    }
                    print_head(&ctx.audit, "stop", ctx.json).await;
                    return Ok(None);
                }
                return Err(Interrupted.into());
            }
        }
    };
    // A one-shot receiver is done: connections still in their handshake are dropped.
    tasks.shutdown().await;
    endpoint.close(run::CLOSE_CANCELLED.into(), b"receiver done");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    result
}

/// How one served connection ended, when not with a transfer.
enum Served {
    /// Ctrl-C or SIGTERM (recorded).
    Interrupted,
    /// The transfer (or its handshake) failed; the connection is closed with its code.
    /// With the names to hide in its message.
    Failed(TransferError, Names),
}

/// One direct connection: the QUIC handshake, then a transfer, each bounded by the
/// handshake timeout until the peer is authenticated.
async fn serve_connection(
    incoming: quinn::Incoming,
    ctx: &DaemonContext,
    pool: &Arc<CipherPool>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(Summary, Names), Served> {
    let timeouts = &ctx.policy.timeouts;
    // A QUIC handshake that fails proves nothing about the peer.
    let failed = |e: quinn::ConnectionError| {
        Served::Failed(
            TransferError::Unauthenticated(SessionError::Io(e.into())),
            ctx.audit.names(),
        )
    };
    let connecting = incoming.accept().map_err(failed)?;
    let conn = match tokio::time::timeout(timeouts.handshake, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(failed(e)),
        Err(_) => {
            return Err(Served::Failed(
                TransferError::Unauthenticated(SessionError::Timeout {
                    stage: Stage::Handshake,
                    after: timeouts.handshake,
                }),
                ctx.audit.names(),
            ));
        }
    };
    let (rec, names, events) = ctx.session(ctx.quiet);
    let transfer = ctx.receive(&conn, pool, &events, &rec);
    let result = tokio::select! {
        r = transfer => r,
        _ = stopping.changed() => {
            // The partial files and their resume records stay.
            conn.close(run::CLOSE_CANCELLED.into(), b"cancelled");
            record_interruption(&rec).await;
            return Err(Served::Interrupted);
        }
    };
    match result {
        Ok(summary) => {
            run::wait_for_sender_close(&conn).await;
            Ok((summary, names))
        }
        Err(e) => {
            close_after_error(&conn, &e).await;
            Err(Served::Failed(e, names))
        }
    }
}

/// Longest wait between two attempts to reach the relay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Serves transfers at the relay with `slots` listeners until Ctrl-C or SIGTERM.
async fn daemon(ctx: Arc<DaemonContext>, opts: RelayOptions, slots: usize) -> anyhow::Result<()> {
    let pool = CipherPool::with_all_cores()?;
    let relay = opts.choose(&run::rendezvous_for(&ctx.identity.public()))?;
    if ctx.json {
        println!(
            "{}",
            json!({"event": "daemon", "relay": relay, "slots": slots})
        );
    } else {
        println!("receiving at relay {relay} ({slots} at once); Ctrl-C to stop");
    }
    print_head(&ctx.audit, "start", ctx.json).await;
    let sweeping = spawn_daily_sweep(&ctx);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let opts = Arc::new(opts);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..slots {
        tasks.spawn(daemon_slot(
            Arc::clone(&ctx),
            Arc::clone(&opts),
            Arc::clone(&pool),
            stopping.clone(),
        ));
    }
    shutdown_signal().await;
    sweeping.abort();
    // Slots in a transfer close it and record the interruption; then they end.
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
    if let Err(e) = ctx.audit.flush_suppressed().await {
        eprintln!("warning: {e}");
    }
    print_head(&ctx.audit, "stop", ctx.json).await;
    Ok(())
}

/// Records that the user or the service stopped a transfer (a warning if it cannot).
async fn record_interruption(rec: &crate::audit::SessionAudit) {
    if let Err(e) = rec.interrupted().await {
        eprintln!("warning: {e}");
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is
/// called (inside a runtime), not when it is first polled, so a signal that comes right
/// after is not lost (or fatal).
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            () = recv_or_never(term.as_mut()) => {}
            () = recv_or_never(int.as_mut()) => {}
        }
    }
}

/// Waits for the signal, or forever when its handler could not be installed.
async fn recv_or_never(s: Option<&mut tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// One listener slot of the daemon: wait at the relay, receive, repeat. A peer that says
/// nothing holds the slot at most for the handshake timeout.
async fn daemon_slot(
    ctx: Arc<DaemonContext>,
    opts: Arc<RelayOptions>,
    pool: Arc<CipherPool>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let joined = tokio::select! {
            j = relay_client::listen(&opts, &ctx.identity) => j,
            _ = stopping.changed() => return,
        };
        let j = match joined {
            Ok(j) => j,
            Err(relay_client::JoinError::Refused {
                refusal: crate::relay::hello::Refusal::PairingTimeout,
                ..
            }) => continue,
            Err(e) => {
                eprintln!("warning: {e}; retrying in {} s", backoff.as_secs());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        let (rec, names, events) = ctx.session(false);
        let transfer = ctx.receive(&j.connection, &pool, &events, &rec);
        let result = tokio::select! {
            r = transfer => r,
            _ = stopping.changed() => {
                j.connection.close(run::CLOSE_CANCELLED.into(), b"cancelled");
                record_interruption(&rec).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), j.endpoint.wait_idle()).await;
                return;
            }
        };
        match result {
            Ok(summary) => {
                report("received", &summary, ctx.json, &names);
                run::wait_for_sender_close(&j.connection).await;
            }
            Err(e) => {
                close_after_error(&j.connection, &e).await;
                notice(ctx.json, None, e, &names, false);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), j.endpoint.wait_idle()).await;
    }
}

/// How a command shows what happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// JSON lines on stdout.
    Json,
    /// For people: the offer on stderr, a progress bar when stderr is a terminal.
    Human,
    /// Only errors and the summary.
    Quiet,
}

impl Output {
    fn of(json: bool, quiet: bool) -> Self {
        match (json, quiet) {
            (true, _) => Output::Json,
            (false, true) => Output::Quiet,
            (false, false) => Output::Human,
        }
    }
}

/// Prints transfer events: JSON lines with `--json`; otherwise the offer (what will land
/// where, from whom) on stderr and, on a terminal, a progress bar with rate and ETA.
/// Names are shown by `names` (hashed in names mode `hash`).
fn events(out: Output, book: &AddressBook, names: Names) -> Events {
    let peer_names: std::collections::HashMap<String, String> = book
        .peers()
        .iter()
        .map(|p| (p.key.to_string(), p.name.clone()))
        .collect();
    let bar: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();
    // `shown` shows file names; `names` below stays the peers' names.
    let shown = names;
    let names = peer_names;
    Arc::new(move |e| match (out, e) {
        (
            Output::Json,
            Event::Offer {
                peer,
                files,
                dirs,
                total,
                top_level,
                top_level_count,
            },
        ) => {
            let top_level: Vec<String> = top_level.iter().map(|n| shown.show(n)).collect();
            println!(
                "{}",
                json!({"event": "offer", "peer": peer.fingerprint().to_string(), "peer_name": names.get(&peer.to_string()), "files": files, "dirs": dirs, "bytes": total, "top_level": top_level, "top_level_count": top_level_count, "names": names_mode(&shown)})
            );
        }
        (
            Output::Human,
            Event::Offer {
                peer,
                files,
                dirs,
                total,
                top_level,
                top_level_count,
            },
        ) => {
            let top_level: Vec<String> = top_level.iter().map(|n| shown.tag(n)).collect();
            let offer = Event::Offer {
                peer,
                files,
                dirs,
                total,
                top_level,
                top_level_count,
            };
            eprintln!("{}", describe_offer(&names, &offer));
        }
        (Output::Json, Event::Progress { bytes, total }) => {
            println!(
                "{}",
                json!({"event": "progress", "bytes": bytes, "total": total})
            );
        }
        (Output::Human, Event::Progress { bytes, total }) => {
            let b = bar.get_or_init(|| progress_bar(total));
            b.set_position(bytes);
            if bytes >= total {
                b.finish_and_clear();
            }
        }
        (Output::Json, Event::FileDone { path, size, blake3 }) => {
            println!(
                "{}",
                json!({"event": "file_done", "path": shown.show(&path), "size": size, "blake3": blake3.to_hex().to_string()})
            );
        }
        (Output::Json, Event::Warning { path, message }) => {
            // The path as the other events show it; the message redacted as well, should
            // a name have found its way into it.
            let path = path.map(|p| shown.show(&p));
            let message = shown.redact(&message);
            println!(
                "{}",
                json!({"event": "warning", "path": path, "message": message})
            );
        }
        (Output::Human | Output::Quiet, Event::Warning { path, message }) => {
            let message = shown.redact(&message);
            match path {
                Some(p) => eprintln!("warning: {}: {message}", shown.tag(&p)),
                None => eprintln!("warning: {message}"),
            }
        }
        (Output::Human, Event::FileDone { path, .. }) => {
            if let Some(b) = bar.get() {
                b.set_message(shown.tag(&path));
            }
        }
        _ => {}
    })
}

/// A [`SourceError`](source::SourceError) for the user. In names mode hash only the
/// command-line arguments were learnt, not the names found below them, so an error of
/// the walk is shown by its kind and the keyed-hash tag of the whole path it is about.
fn source_error_shown(names: &crate::audit::names::Names, e: source::SourceError) -> anyhow::Error {
    use source::SourceError;
    if !names.hides() {
        return e.into();
    }
    let (path, what) = match &e {
        SourceError::NotRegular(p) => (
            p,
            "is not a regular file or directory (devices, FIFOs and sockets are refused)"
                .to_string(),
        ),
        SourceError::BadName(p, _) => (p, "has a name the receiver would refuse".to_string()),
        SourceError::Io { path, source } => (path, format!("cannot be read ({})", source.kind())),
        SourceError::Empty => return e.into(),
    };
    let text = format!("{} {what}", names.tag(path));
    super::Redacted {
        text,
        inner: e.into(),
    }
    .into()
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}",
    ) {
        b.set_style(style);
    }
    b
}

/// "offer from NAME (fingerprint): 100000 files and 2 empty folders, 1.2 GiB (1234 bytes)
/// in a, b, c and 4 more" (names escaped by the receiver; a big offer stays one line).
fn describe_offer(names: &std::collections::HashMap<String, String>, offer: &Event) -> String {
    let Event::Offer {
        peer,
        files,
        dirs,
        total,
        top_level,
        top_level_count,
    } = offer
    else {
        return String::new();
    };
    let who = match names.get(&peer.to_string()) {
        Some(n) => format!("{n} ({})", peer.fingerprint()),
        None => format!("UNKNOWN sender {}", peer.fingerprint()),
    };
    let shown: Vec<&str> = top_level.iter().take(10).map(String::as_str).collect();
    let more = match top_level_count.saturating_sub(shown.len() as u64) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let plural = |n: u64, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let folders = match dirs {
        0 => String::new(),
        &n => format!(" and {}", plural(n, "empty folder", "empty folders")),
    };
    format!(
        "offer from {who}: {}{folders}, {} ({total} bytes) in {}{more}",
        plural(*files, "file", "files"),
        indicatif::BinaryBytes(*total),
        shown.join(", ")
    )
}

/// Asks at the terminal whether to accept an offer (the offer itself was just printed).
fn ask_at_terminal(dest: &std::path::Path) -> Confirm {
    let dest = dest.display().to_string();
    Confirm(Arc::new(move |_| {
        eprint!(
            "accept into {}? [y/N] ",
            crate::transfer::paths::escape(&dest)
        );
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_err() {
            return false;
        }
        matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
    }))
}

/// `plain` or `hash`: how the names in an event are shown.
fn names_mode(names: &Names) -> &'static str {
    if names.hides() { "hash" } else { "plain" }
}

/// Prints the summary of a transfer; file names are shown by `names`.
fn report(what: &str, s: &Summary, json: bool, names: &Names) {
    // The rate counts the bytes that crossed the network in this run.
    let mbps = s.bytes.saturating_sub(s.resumed) as f64 / s.seconds.max(1e-9) / 1e6;
    if json {
        // Written file by file: a summary of 100,000 files as one JSON value would take
        // more memory than the whole transfer.
        let head = json!({"event": "done", "bytes": s.bytes, "resumed_bytes": s.resumed, "seconds": s.seconds, "mbps": mbps, "cpu_s": crate::bench::proc::cpu_seconds(None), "peer": s.peer.fingerprint().to_string(), "names": names_mode(names)});
        let head = head.to_string();
        let mut w = std::io::BufWriter::new(std::io::stdout().lock());
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            w.write_all(head.strip_suffix('}').unwrap_or(&head).as_bytes())?;
            w.write_all(b",\"files\":[")?;
            for (i, (p, size, h)) in s.files.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                let one = json!({"path": names.show(&p.to_string()), "size": size, "blake3": h.to_hex().to_string()});
                serde_json::to_writer(&mut w, &one)?;
            }
            w.write_all(b"]}\n")?;
            w.flush()
        })();
        if let Err(e) = written {
            eprintln!("warning: summary not written: {e}");
        }
    } else {
        println!(
            "{what} {} files, {} bytes in {:.2} s ({mbps:.1} MB/s), peer {}",
            s.files.len(),
            s.bytes,
            s.seconds,
            s.peer.fingerprint()
        );
        if s.resumed > 0 {
            println!(
                "  resumed: {} bytes were already at the receiver",
                s.resumed
            );
        }
        for (p, size, h) in &s.files {
            println!(
                "  {}  {size} bytes  blake3 {}",
                names.tag(&p.to_string()),
                h.to_hex()
            );
        }
    }
}
