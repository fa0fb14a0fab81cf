//! `conduit send` (direct or through a relay, `--relay`), and the options `send` and
//! `receive` share; `receive` itself is in [`super::receive`], what both print in
//! [`super::output`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::audit::names::Names;
use crate::audit::{Audit, NameMode};
use crate::cli::AuditNames;
use crate::cli::output::{Output, events, report, source_error_shown};
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
use crate::session::Timeouts;
use crate::transfer::protocol::{Refusal, RefusalCode};
use crate::transfer::source;
use crate::transfer::{Recipient, Sender, Summary, TransferError};
use crate::transport::path::PathPolicy;
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
    /// Seconds the code stays valid: the sender waits this long for the receiver to use
    /// it [default: 600, or code_wait_secs in conduit.toml].
    #[arg(long, requires = "code", value_name = "SECS")]
    code_wait: Option<u64>,
    /// The receiver's address, HOST:PORT (UDP), e.g. lab.example.org:7470, 192.0.2.7:7470
    /// or [2001:db8::7]:7470 (it runs `conduit receive --listen`; every address of a name
    /// is tried); takes precedence over `--relay`, CONDUIT_RELAY or a relay in
    /// conduit.toml.
    #[arg(long, value_name = "HOST:PORT", value_parser = crate::cli::addr::host_port)]
    direct: Option<String>,
    #[command(flatten)]
    relay: RelayFlags,
    /// STREAM chunk size in bytes: a power of two from 16384 to 4194304 (another value is
    /// a usage error, exit code 2).
    #[arg(long, value_name = "BYTES", default_value_t = u64::from(DEFAULT_CHUNK_SIZE.get()), value_parser = crate::cli::chunk_size)]
    chunk_size: u64,
    /// STREAM cipher suites to accept: auto (AES-256-GCM when both sides have hardware
    /// AES, else ChaCha20-Poly1305), aes-256-gcm or chacha20-poly1305; `[transfer] suite`
    /// in conduit.toml [default: auto].
    #[arg(long, value_name = "SUITE")]
    suite: Option<crate::crypto::suite::SuitePolicy>,
    /// The post-quantum key exchange (ML-KEM-768 beside X25519): required (refuse a peer
    /// without it), preferred (accept one) or off (never offer it); `[transfer]
    /// post_quantum` in conduit.toml [default: required].
    #[arg(long, value_name = "MODE")]
    post_quantum: Option<crate::crypto::hybrid::PqPolicy>,
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
    pub(crate) fn layer(&self, t: &mut TransferFile) {
        t.handshake_timeout_secs = self.handshake_timeout;
        t.offer_timeout_secs = self.offer_timeout;
        t.answer_timeout_secs = self.answer_timeout;
        t.header_timeout_secs = self.header_timeout;
        t.idle_timeout_secs = self.idle_timeout;
    }
}

/// The timeouts of the resolved configuration. Zero is refused.
pub(crate) fn timeouts(r: &Resolved) -> anyhow::Result<Timeouts> {
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

/// How long a code phrase stays valid (`--code-wait`, `transfer.code_wait_secs`): the
/// side that starts first waits this long for the other. Zero is refused.
pub(crate) fn code_wait(r: &Resolved) -> anyhow::Result<Duration> {
    match r.code_wait_secs.value {
        0 => Err(Usage("--code-wait: at least 1 second".into()).into()),
        secs => Ok(Duration::from_secs(secs)),
    }
}

/// A duration as people say it: "10 min", "90 s".
pub(crate) fn spoken(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 120 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Whether the value of argument `id` came from its environment variable (clap reads
/// it, for `--help` and for checking it), not from the command line.
pub(crate) fn from_env(m: &clap::ArgMatches, id: &str) -> bool {
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
        layer.transfer.suite = self.suite;
        layer.transfer.post_quantum = self.post_quantum;
        layer.transfer.code_wait_secs = self.code_wait;
        layer.audit.names = self.audit_names.map(NameMode::from);
        layer
    }
}

/// How to reach a relay (send and receive).
#[derive(Debug, Default, Args)]
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
    /// Which paths the transfer may take: auto (through the relay, moving to a direct
    /// path between the two endpoints when their NATs allow one), relay (every packet
    /// through the relay) or direct (never through a relay); `[transfer] path` in
    /// conduit.toml [default: auto].
    #[arg(long, value_name = "POLICY")]
    path: Option<crate::transport::path::PathPolicy>,
}

impl RelayFlags {
    /// Forgets the values clap took from environment variables (see
    /// [`SendArgs::drop_env_values`]); the token is not a configuration key and stays.
    pub(crate) fn drop_env_values(&mut self, m: &clap::ArgMatches) {
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
    pub(crate) fn layer(&self, t: &mut TransferFile) {
        t.relay = self.relay.clone();
        t.relay_ca = self.relay_ca.clone();
        t.relay_pin = self.relay_pin.clone();
        t.relay_wait_secs = self.relay_wait;
        t.path = self.path;
    }

    /// No relay flag, only an access token (`conduit agent`, which takes the relay from
    /// the configuration).
    pub(crate) fn token_only(token: Option<String>) -> Self {
        Self {
            relay_token: token,
            ..Self::default()
        }
    }

    /// The relay options of the resolved configuration (with the token given here);
    /// `None` without a relay.
    pub(crate) fn options(&self, r: &Resolved) -> anyhow::Result<Option<RelayOptions>> {
        let Some(list) = r.relay.value.as_ref() else {
            return Ok(None);
        };
        if r.path.value == PathPolicy::Direct {
            return Err(Usage(format!(
                "the path policy is direct ({}): this endpoint never sends through a relay; use --direct HOST:PORT to send, --listen to receive, or --path auto",
                match r.path.source {
                    crate::config::Source::File => "transfer.path in conduit.toml",
                    _ => "--path",
                }
            ))
            .into());
        }
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
            switch: true,
            punch: r.path.value == PathPolicy::Auto,
            idle: timeouts(r)?.idle,
        }))
    }
}

/// The relay to meet the peer at, unless an address was given (`flag`, which takes
/// precedence); neither is a usage error.
pub(crate) fn relay_unless_direct(
    verb: &str,
    flag: &str,
    addr: Option<&str>,
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

/// One connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The runtime of `send` and `receive`.
pub(crate) fn runtime() -> anyhow::Result<Runtime> {
    Ok(Runtime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    )))
}

/// A tokio runtime that, when dropped, does not wait for what is still running: a read
/// at the terminal still blocked after Ctrl-C, or a connection still closing, does not
/// hold the process (the command has its result by then).
pub(crate) struct Runtime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for Runtime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        // Some until dropped.
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub(crate) fn send(home: &Home, args: SendArgs) -> anyhow::Result<()> {
    let identity = crate::cli::init::identity_for_use(home)?;
    let mut book = AddressBook::load(home)?;
    let config = crate::cli::resolve(home, &args.flags())?;
    let audit = Audit::open(home, &identity, &book, config.audit_options(false));
    // Names mode hash: the names on the command line and those sent are shown hashed,
    // in error messages too.
    let names = audit.names();
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
    let summary = send_with(&args, identity, &book, &config, audit, &names)
        .map_err(|e| Redacted::hide(&names, e))?;
    report("sent", &summary, Output::of(args.json, args.quiet), &names);
    if let Some(name) = &args.save_peer {
        save_peer(&mut book, name, &summary)?;
    }
    Ok(())
}

/// `send` once the audit trail is open: the recipient, the files, the connection, the
/// transfer.
fn send_with(
    args: &SendArgs,
    identity: Identity,
    book: &AddressBook,
    config: &Resolved,
    audit: Audit,
    names: &Names,
) -> anyhow::Result<Summary> {
    // Everything is checked before a code is made and shown: the recipient, the files,
    // the settings. A FIPS build refuses a code phrase (SPAKE2) before anything.
    crate::crypto::fips::refuse_code(args.code)?;
    let peer = match &args.to {
        Some(name) => Some(
            book.find_by_name(name)
                .ok_or_else(|| crate::peers::PeersError::NotFound(name.clone()))
                .context("the recipient (--to) is not in the address book")?,
        ),
        None => None,
    };
    // In a FIPS build the recipient is pinned by its FIPS key too (refused without one).
    let known = peer.map(Recipient::for_peer).transpose()?;
    // The recipient's own path policy in the address book, unless --path says otherwise.
    let config = &match peer.and_then(|p| p.path.map(|path| (p, path))) {
        Some((p, path)) if config.path.source != crate::config::Source::Flag => {
            if path == PathPolicy::Direct && args.direct.is_none() {
                return Err(Usage(format!(
                    "the address book says {} takes transfers only directly (path = direct): use --direct HOST:PORT, or `conduit peers path {} auto`",
                    p.name, p.name
                ))
                .into());
            }
            let mut c = config.clone();
            c.path.value = path;
            c
        }
        _ => config.clone(),
    };
    let chunk = ChunkSize::new(args.chunk_size)?;
    let collected =
        source::collect_with_dirs(&args.paths).map_err(|e| source_error_shown(names, e))?;
    names.learn(
        collected
            .files
            .iter()
            .map(|f| f.rel.as_str())
            .chain(collected.dirs.iter().map(|d| d.as_str())),
    );
    for s in &collected.skipped {
        let shown = if names.hides() {
            names.tag(&s.to_string_lossy())
        } else {
            crate::transfer::paths::escape(&s.to_string_lossy())
        };
        eprintln!("warning: skipped symlink {shown}");
    }
    let timeouts = timeouts(config)?;
    let relay = relay_unless_direct(
        "send",
        "--direct",
        args.direct.as_deref(),
        &args.relay,
        config,
    )?;
    let valid = code_wait(config)?;
    crate::crypto::fips::refuse_suite(config.suite.value)?;
    let recipient = match known {
        Some(r) => r,
        None => Recipient::Code(Code::generate()?),
    };
    let rt = runtime()?;
    let shutdown = {
        let _in = rt.enter();
        Shutdown::install()
    };
    rt.block_on(async {
        let (endpoint, conn) = shutdown
            .race(async {
                Ok(match (&relay, args.direct.as_deref(), &recipient) {
                    // Known recipient: the receiver waits at the relay and we join it.
                    (Some(opts), _, Recipient::Known(_) | Recipient::Fips { .. }) => {
                        let j =
                            relay_client::join(opts, Role::Connect, false, recipient.rendezvous())
                                .await?;
                        (j.endpoint, j.connection)
                    }
                    // Code: we wait at the relay, and show the code once there; the receiver
                    // joins us, once.
                    (Some(opts), _, Recipient::Code(code)) => {
                        let hint = receive_hint_relay(config);
                        let shown = std::sync::atomic::AtomicBool::new(false);
                        let show = |_: &str| {
                            if !shown.swap(true, std::sync::atomic::Ordering::Relaxed) {
                                show_code(code, &hint, valid, args.json);
                            }
                        };
                        let j = wait_at_relay(opts, code, valid, &show).await?;
                        (j.endpoint, j.connection)
                    }
                    (None, Some(addr), recipient) => {
                        let addrs = crate::cli::addr::resolve(addr).await?;
                        let wait = match recipient {
                            Recipient::Code(code) => {
                                show_code(code, &receive_hint_direct(&addrs), valid, args.json);
                                Some(valid)
                            }
                            Recipient::Known(_) | Recipient::Fips { .. } => None,
                        };
                        connect(&addrs, addr, wait, timeouts.idle).await?
                    }
                    (None, None, _) => anyhow::bail!("--direct or --relay is required"),
                })
            })
            .await?;
        let sender = Sender::new(identity, CipherPool::with_all_cores()?)
            .chunk_size(chunk)
            .suites(config.suite.value)
            .post_quantum(config.post_quantum.value)
            .timeouts(timeouts)
            .audit(audit)
            .events(events(Output::of(args.json, args.quiet), book));
        let result = sender
            .send(&conn, &recipient, &collected, shutdown.signalled())
            .await;
        if matches!(result, Err(TransferError::Cancelled)) {
            let _ = tokio::time::timeout(CLOSE_ON_SIGNAL, endpoint.wait_idle()).await;
            return Err(Interrupted.into());
        }
        // A signal while the connection closes: do not wait for it.
        let _ = shutdown
            .race(async {
                endpoint.wait_idle().await;
                Ok(())
            })
            .await;
        result.map_err(|e| refused_by(e, args.to.as_deref()))
    })
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
fn refused_by(e: TransferError, to: Option<&str>) -> anyhow::Error {
    use crate::crypto::handshake::{AbortReason, HandshakeError};
    let who = to.map_or_else(|| "the receiver".to_string(), str::to_string);
    let sentence = match (&e, e.handshake_error()) {
        (TransferError::Refused(r), _) => sentence(r),
        // In clear before authentication: what the receiver (or anyone on the path) said.
        (_, Some(HandshakeError::PeerAborted(AbortReason::UnknownPeer))) => sentence(&Refusal {
            code: RefusalCode::UnknownSender,
            detail: None,
        }),
        // The code was mistyped (or guessed) at the other end.
        (_, Some(HandshakeError::PeerAborted(AbortReason::CodeMismatch))) => {
            return anyhow::Error::new(e).context(
                "the receiver's code does not match this one (check it with them word by word; this code is used up: send again for a new one)",
            );
        }
        _ => return e.into(),
    };
    // The sentence says all the error did: one line, not two.
    anyhow::Error::new(RefusedBy { who, sentence })
}

/// What the receiver said, then what the sender's user can do next.
pub(crate) fn sentence(r: &Refusal) -> String {
    format!("{}; {}", r.explain(), next_step(r.code))
}

/// What the sender's user can do next about a refusal.
pub(crate) fn next_step(code: RefusalCode) -> &'static str {
    match code {
        RefusalCode::Declined => "ask them before sending again",
        RefusalCode::UnknownSender => {
            "they can add this endpoint with `conduit peers add NAME KEY` (KEY from `conduit id` here), or receive with --yes"
        }
        RefusalCode::Exists => "they can re-run with --overwrite",
        RefusalCode::NoSpace => "they need to free space, or send fewer files at once",
        RefusalCode::TooManyEntries { .. } => {
            "send the files in several offers, or they can raise --max-entries (transfer.max_entries)"
        }
        RefusalCode::Policy => "ask them to check their receiver's settings",
    }
}

/// Connects to the first of `addrs` (the addresses of `shown`, as given) that answers
/// ([`transport::addr::connect_first`]), once, or (code mode: `wait`) for as long as the
/// code is valid, since the receiver may not be listening yet (its user types the code
/// after the sender showed it).
///
/// While waiting, an attempt is never given up by us: it ends by QUIC's idle timeout
/// (at most [`ATTEMPT_IDLE`]), which sends nothing. An attempt dropped before that sends
/// a close, and when the receiver has started listening meanwhile that close (or the
/// attempt's last packets) reaches it as a connection aborted in its handshake: the
/// receiver then reported a failed connection, and a one-shot receiver used to end on it.
async fn connect(
    addrs: &[SocketAddr],
    shown: &str,
    wait: Option<Duration>,
    idle: Duration,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let unanswered = || {
        format!(
            "no answer from {shown} (is `conduit receive --listen` running there, and UDP to its port open?)"
        )
    };
    let Some(valid) = wait else {
        return transport::addr::connect_direct(addrs, CONNECT_TIMEOUT, idle)
            .await
            .with_context(unanswered);
    };
    let deadline = tokio::time::Instant::now() + valid;
    // Longer than the attempt's idle timeout: QUIC ends it first.
    let attempt_limit = ATTEMPT_IDLE + Duration::from_secs(5);
    loop {
        let attempt =
            transport::addr::connect_direct(addrs, attempt_limit, idle.min(ATTEMPT_IDLE)).await;
        match attempt {
            Ok(connected) => return Ok(connected),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow::Error::new(e)
                    .context(unanswered())
                    .context(CodeExpired {
                        valid,
                        who: "receiver",
                    }));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The longest a code sender's connection attempt lasts without an answer (its QUIC idle
/// timeout, also that of the connection it becomes: keep-alives keep a live peer's
/// connection open).
const ATTEMPT_IDLE: Duration = Duration::from_secs(10);

/// A code phrase that no peer used while it was valid.
#[derive(Debug, thiserror::Error)]
#[error(
    "the code expired: no {who} used it within {} (the code's validity: --code-wait, or code_wait_secs in conduit.toml); start again for a new code",
    spoken(*.valid)
)]
pub(crate) struct CodeExpired {
    /// How long it was valid.
    pub(crate) valid: Duration,
    /// "receiver" or "sender".
    pub(crate) who: &'static str,
}

/// A code sender waits at the relay for the receiver, for as long as the code is valid:
/// when the relay gives up on the pairing first (its own pairing timeout), it joins
/// again (the nameplate is burned only by a pairing). `shown` is called once the relay
/// has our Hello (each time).
async fn wait_at_relay(
    opts: &RelayOptions,
    code: &Code,
    valid: Duration,
    shown: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<relay_client::Joined> {
    use crate::relay::client::JoinError;
    use crate::relay::hello::Refusal;
    let deadline = tokio::time::Instant::now() + valid;
    let rendezvous = crate::transfer::rendezvous_for_code(code);
    loop {
        let joined = relay_client::join_reporting(opts, Role::Listen, true, rendezvous, shown);
        match tokio::time::timeout_at(deadline, joined).await {
            Err(_) => {
                return Err(CodeExpired {
                    valid,
                    who: "receiver",
                }
                .into());
            }
            Ok(Err(JoinError::Refused {
                refusal: Refusal::PairingTimeout,
                ..
            })) => {}
            Ok(joined) => return Ok(joined?),
        }
    }
}

/// Shows the code, and the command the receiving side runs.
fn show_code(code: &Code, hint: &str, valid: Duration, json: bool) {
    if json {
        println!(
            "{}",
            json!({"event": "code", "code": code.to_string(), "receive": hint, "valid_secs": valid.as_secs()})
        );
    } else {
        println!("code: {code}");
        println!(
            "on the receiving side run: {hint}\nand type the code when asked (it is valid for {})",
            spoken(valid)
        );
    }
}

/// The command a direct code receiver runs: listening on the port the sender connects
/// to, on every address (of the family the sender tries first).
fn receive_hint_direct(addrs: &[SocketAddr]) -> String {
    let Some(addr) = addrs.first() else {
        return "conduit receive --listen 0.0.0.0:PORT --code".to_string();
    };
    let any: std::net::IpAddr = if addr.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    format!(
        "conduit receive --listen {} --code",
        SocketAddr::new(any, addr.port())
    )
}

/// The command a code receiver runs at the relay: with the relay (and how to verify it)
/// unless conduit.toml gives them, where the receiving side has them too.
fn receive_hint_relay(config: &Resolved) -> String {
    use crate::config::Source;
    let mut hint = String::from("conduit receive --code");
    let given = |source: Source| matches!(source, Source::Flag | Source::Env);
    if let (Some(relay), true) = (&config.relay.value, given(config.relay.source)) {
        hint.push_str(&format!(" --relay {relay}"));
    }
    if let (Some(pin), true) = (&config.relay_pin.value, given(config.relay_pin.source)) {
        hint.push_str(&format!(" --relay-pin {pin}"));
    }
    if let (Some(ca), true) = (&config.relay_ca.value, given(config.relay_ca.source)) {
        hint.push_str(&format!(" --relay-ca {}", ca.display()));
    }
    hint
}

/// Saves the peer of a finished code-phrase transfer. The transfer itself succeeded, so
/// a failure here (name or key already in the book) is a warning, not an error.
pub(crate) fn save_peer(
    book: &mut AddressBook,
    name: &str,
    summary: &Summary,
) -> anyhow::Result<()> {
    match book.add(name, summary.peer).and_then(|()| book.save()) {
        Ok(()) => println!("saved peer {name} ({})", summary.peer.fingerprint()),
        Err(e) => eprintln!("warning: peer not saved: {e}"),
    }
    Ok(())
}

/// Ctrl-C (SIGINT) or SIGTERM, watched for the whole command from the moment it is
/// installed: every wait of `send` and `receive` (joining a relay, connecting, the
/// handshake, the question at the terminal, the transfer) races [`Shutdown::signalled`],
/// so a signal is never swallowed by a handler nobody is waiting on.
#[derive(Clone)]
pub(crate) struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// Installs the handlers; call inside the runtime (it spawns the task that waits).
    pub(crate) fn install() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let signal = shutdown_signal();
        tokio::spawn(async move {
            signal.await;
            let _ = tx.send(true);
            // The sender stays alive: a closed channel would read as a signal.
            std::future::pending::<()>().await;
        });
        Shutdown(rx)
    }

    /// Resolves once a signal came (at once if one already did).
    pub(crate) fn signalled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            if rx.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// `fut`, or [`Interrupted`] when a signal comes first.
    pub(crate) async fn race<T>(
        &self,
        fut: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::select! {
            r = fut => r,
            () = self.signalled() => Err(Interrupted.into()),
        }
    }
}

/// How long a command stopped by a signal waits for its connection to close cleanly
/// (the peer told, the close acknowledged): the process ends well within 2 s.
pub(crate) const CLOSE_ON_SIGNAL: Duration = Duration::from_millis(500);

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
