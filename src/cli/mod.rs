//! Command-line interface: clap definitions, command handlers and exit codes.
//!
//! Every handler returns `anyhow::Result`; [`exit_code`] maps the typed library errors
//! found in the chain to the documented exit codes ([`code`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod addr;
mod agent;
mod agent_run;
mod audit;
mod bench;
mod certs;
mod config;
mod console;
mod demo;
mod init;
mod keys;
mod meta;
mod output;
mod peers;
mod prompt;
mod receive;
mod relay;
mod transfer;

/// Documented exit codes (README, "Exit codes").
pub mod code {
    /// Success.
    pub const OK: u8 = 0;
    /// Any failure without a more specific code.
    pub const FAILURE: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// Authentication failed (wrong key, wrong code, unknown peer).
    pub const AUTH: u8 = 3;
    /// Integrity failed (a chunk or a hash did not verify; a broken audit chain).
    pub const INTEGRITY: u8 = 4;
    /// The peer refused.
    pub const REFUSED: u8 = 5;
    /// `audit verify --expect-head/--expect-records`: the chain is valid but does not
    /// reach the expected record (records were cut off its end).
    pub const AUDIT_CUT: u8 = 6;
    /// FIPS mode refused: the FIPS module failed its start-up checks, or something not
    /// approved in FIPS mode was asked for (a code phrase, ChaCha20-Poly1305, a peer
    /// that does not speak the FIPS session).
    pub const FIPS: u8 = 7;
    /// Interrupted by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;
}

/// phi-conduit: end-to-end encrypted transfer of ePHI over QUIC.
#[derive(Debug, Parser)]
#[command(name = "conduit", version = version(), about, long_about = None)]
pub struct Cli {
    /// The endpoint's home directory (identity, address book, audit log, conduit.toml)
    /// for the commands that use one (init, keygen, id, peers, send, receive, relay,
    /// audit, config, agent, queue; they take --home after their name too); default:
    /// $CONDUIT_HOME, else the
    /// OS data directory.
    #[arg(long, value_name = "DIR")]
    pub home: Option<std::path::PathBuf>,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// `conduit --version`: the package version, then whether the binary is in FIPS mode and
/// on which cryptographic module (docs/FIPS.md).
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{}\n{}",
            env!("CARGO_PKG_VERSION"),
            crate::crypto::fips::describe(&crate::crypto::fips::status())
        )
    })
}

/// `--home DIR` of a command that uses the endpoint's home (and of its subcommands).
fn home_arg() -> clap::Arg {
    clap::Arg::new(HOME_ID)
        .long("home")
        .value_name("DIR")
        .global(true)
        .value_parser(clap::value_parser!(std::path::PathBuf))
        .help(
            "The endpoint's home directory (identity, address book, audit log, \
             conduit.toml); default: $CONDUIT_HOME, else the OS data directory",
        )
}

/// The id of [`home_arg`] in a subcommand's matches.
const HOME_ID: &str = "home";

/// The commands. Those that use the endpoint's home take `--home` ([`home_arg`]); the
/// others do not list or accept it.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// First run: create this endpoint's identity, write a commented conduit.toml with
    /// the relay, and print the line to give the other clinic.
    #[command(arg = home_arg())]
    Init(init::InitArgs),
    /// Create this endpoint's X25519 identity.
    #[command(arg = home_arg())]
    Keygen(keys::KeygenArgs),
    /// Show this endpoint's public key and fingerprint.
    #[command(arg = home_arg())]
    Id(keys::IdArgs),
    /// The address book of known peers (pinned keys).
    #[command(subcommand, arg = home_arg())]
    Peers(peers::PeersCommand),
    /// Send files and directories to a known peer or by code phrase.
    #[command(arg = home_arg())]
    Send(transfer::SendArgs),
    /// Receive a transfer into a directory (or keep receiving: --daemon).
    #[command(arg = home_arg())]
    Receive(receive::ReceiveArgs),
    /// Relay, receiver and sender on loopback in one process: see it work.
    Demo(demo::DemoArgs),
    /// Run a relay in conduit mode: it pairs peers and forwards ciphertext only.
    #[command(arg = home_arg())]
    Relay(relay::RelayArgs),
    /// Development certificates for relays (a CA, and relay certificates it signs).
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(meta::CompletionsArgs),
    /// Print the man page (roff) of conduit or of one subcommand, or write every page
    /// into a directory (--dir).
    Man(meta::ManArgs),
    /// The endpoint's configuration (conduit.toml in the home).
    #[command(subcommand, arg = home_arg())]
    Config(config::ConfigCommand),
    /// The endpoint's audit trail: verify the chain, show records.
    #[command(subcommand, arg = home_arg())]
    Audit(audit::AuditCommand),
    /// Run the [[outbox]] and [[inbox]] rules of conduit.toml until SIGTERM (or: check
    /// them, show the queue's status).
    #[command(arg = home_arg())]
    Agent(agent::AgentArgs),
    /// The agent's durable queue: list, retry or cancel delivery items.
    #[command(subcommand, arg = home_arg())]
    Queue(agent::QueueCommand),
    /// The agent's local web console: print a login link (docs/CONSOLE.md).
    #[command(subcommand, arg = home_arg())]
    Console(console::ConsoleCommand),
    /// Measure throughput against raw baselines in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

impl Command {
    /// Whether the command uses the endpoint's home (and so takes `--home`).
    fn uses_home(&self) -> bool {
        !matches!(
            self,
            Command::Demo(_)
                | Command::Certs(_)
                | Command::Completions(_)
                | Command::Man(_)
                | Command::Bench(_)
        )
    }

    /// The command's name as typed.
    fn name(&self) -> &'static str {
        match self {
            Command::Init(_) => "init",
            Command::Keygen(_) => "keygen",
            Command::Id(_) => "id",
            Command::Peers(_) => "peers",
            Command::Send(_) => "send",
            Command::Receive(_) => "receive",
            Command::Demo(_) => "demo",
            Command::Relay(_) => "relay",
            Command::Certs(_) => "certs",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
            Command::Config(_) => "config",
            Command::Audit(_) => "audit",
            Command::Agent(_) => "agent",
            Command::Queue(_) => "queue",
            Command::Console(_) => "console",
            Command::Bench(_) => "bench",
        }
    }
}

/// Parses the command line: `--home` before the command, or after it (the later wins).
fn parse() -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().try_get_matches()?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let Some(home) = matches.subcommand().and_then(|(_, sub)| {
        sub.try_get_one::<std::path::PathBuf>(HOME_ID)
            .ok()
            .flatten()
    }) {
        cli.home = Some(home.clone());
    }
    cli.drop_env_values(&matches);
    Ok(cli)
}

/// `--audit-names`: the library's [`crate::audit::NameMode`] as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AuditNames {
    /// The relative path as sent.
    Plain,
    /// A keyed hash of the relative path (HMAC-SHA256 under a key of this endpoint), for
    /// sites that keep names out of logs.
    Hash,
}

impl From<AuditNames> for crate::audit::NameMode {
    fn from(n: AuditNames) -> Self {
        match n {
            AuditNames::Plain => Self::Plain,
            AuditNames::Hash => Self::Hash,
        }
    }
}

/// The configuration values of the environment (`CONDUIT_*`): the binary reads them, the
/// library does not.
pub(crate) fn environment() -> crate::config::Environment {
    crate::config::Environment::capture(|name| std::env::var(name).ok())
}

/// The effective configuration of a command run with this home and these flags:
/// flags, environment, the home's conduit.toml, defaults.
pub(crate) fn resolve(
    home: &crate::home::Home,
    flags: &crate::config::FileConfig,
) -> anyhow::Result<crate::config::Resolved> {
    let config = crate::config::Config::load(home)?;
    Ok(crate::config::Resolved::resolve(
        &config,
        &environment(),
        flags,
    )?)
}

impl Cli {
    /// Forgets the values clap took from environment variables (it reads them for
    /// `--help` and to check them): the environment is a layer of its own in the
    /// configuration ([`crate::config::Resolved`]), below the flags.
    fn drop_env_values(&mut self, matches: &clap::ArgMatches) {
        match (&mut self.command, matches.subcommand()) {
            (Command::Send(args), Some((_, m))) => args.drop_env_values(m),
            (Command::Receive(args), Some((_, m))) => args.drop_env_values(m),
            _ => {}
        }
    }
}

/// `--chunk-size BYTES` as clap parses it: a usage error (exit code 2) unless
/// [`ChunkSize`](crate::crypto::stream::ChunkSize) allows it.
pub(crate) fn chunk_size(text: &str) -> Result<u64, String> {
    let bytes: u64 = text.parse().map_err(|e| format!("{e}"))?;
    crate::crypto::stream::ChunkSize::new(bytes)
        .map(|_| bytes)
        .map_err(|e| e.to_string())
}

/// A count or size that must be at least 1, as clap parses it (0 is a usage error, exit
/// code 2).
pub(crate) fn at_least_one<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialEq + From<u8>,
    T::Err: std::fmt::Display,
{
    let n: T = text.parse().map_err(|e| format!("{e}"))?;
    if n == T::from(0) {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// A command line that parses but cannot run as given (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub(crate) String);

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> ExitCode {
    no_core_dumps();
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout with exit 0, usage errors to stderr.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                code::USAGE
            } else {
                code::OK
            });
        }
    };
    // `demo` and `bench` use throwaway keys and read their own IO accounting from
    // /proc/self, which a non-dumpable process may not (its /proc files belong to root).
    if !matches!(cli.command, Command::Demo(_) | Command::Bench(_)) {
        not_dumpable();
    }
    match run(cli) {
        Ok(()) => ExitCode::from(code::OK),
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::from(code::OK);
            }
            eprintln!("error: {}", describe_with_next_step(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

/// An error whose message was rewritten to keep file names out of the outputs (names
/// mode `hash`, see [`crate::audit::names`]). It is shown as its rewritten text only; the
/// original stays in the chain (as its source) for the exit code, never printed.
pub(crate) struct Redacted {
    text: String,
    inner: anyhow::Error,
}

impl Redacted {
    /// `err` with each name `names` knows replaced by its hash (unchanged when names are
    /// shown as they are).
    pub(crate) fn hide(names: &crate::audit::names::Names, err: anyhow::Error) -> anyhow::Error {
        if !names.hides() {
            return err;
        }
        // A path the receiver refuses is not among the names learnt (it did not parse),
        // and past a bound not all names are learnt: then say what kind of error it is.
        let transfer = err
            .chain()
            .find_map(|c| c.downcast_ref::<crate::transfer::TransferError>());
        let text = match transfer {
            Some(e @ crate::transfer::TransferError::BadPath(_)) => e.audit_reason(true),
            Some(e) if !names.complete() => e.audit_reason(true),
            None if !names.complete() => {
                "failed (message withheld in names mode hash: the transfer has more names than are hidden one by one, and it may quote one)".to_string()
            }
            _ => names.redact(&describe(&err)),
        };
        Redacted { text, inner: err }.into()
    }
}

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redacted({:?})", self.text)
    }
}

impl std::error::Error for Redacted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.inner.as_ref())
    }
}

/// The error and its causes on one line, `a: b: c`, leaving out a cause whose text the
/// line already holds (many errors here quote their source in their own message). A
/// [`Redacted`] error ends the line: its causes are what it hides.
pub(crate) fn describe(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        // QUIC and IO errors of the layers below as sentences (their own text can be a
        // debug-like "aborted by peer: ... (code 2)" or "early eof").
        let text = crate::transfer::sentences::of(cause).unwrap_or_else(|| cause.to_string());
        if cause.is::<Redacted>() {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
            break;
        }
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// [`describe`], then what to do next when the error says nothing about it yet: every
/// error the user sees names what failed, why, and the next step.
pub(crate) fn describe_with_next_step(err: &anyhow::Error) -> String {
    let line = describe(err);
    match next_step(err) {
        Some(step) if !line.contains(step) => format!("{line}; {step}"),
        _ => line,
    }
}

/// What the user can do about `err` (the first cause that has an answer); the library's
/// messages name no flag or command, the binary adds them here.
pub(crate) fn next_step(err: &anyhow::Error) -> Option<&'static str> {
    use crate::crypto::handshake::HandshakeError;
    use crate::transfer::dest::DestError;
    use crate::transfer::protocol::RefusalCode;
    use crate::transfer::{ErrorKind, TransferError};
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<TransferError>() {
            match e {
                // This receiver refused (a sender's refusal is a `RefusedBy` sentence).
                TransferError::Refused(r) => match r.code {
                    RefusalCode::Exists => {
                        return Some(
                            "receive again with --overwrite to replace it, or move it away first",
                        );
                    }
                    RefusalCode::NoSpace => {
                        return Some(
                            "free space there, or receive into another directory with --out DIR",
                        );
                    }
                    RefusalCode::TooManyEntries { .. } => {
                        return Some(
                            "raise --max-entries (transfer.max_entries) to accept an offer this large",
                        );
                    }
                    RefusalCode::UnknownSender => {
                        return Some(
                            "add the sender with `conduit peers add NAME KEY` (KEY from `conduit id` there), or receive with --accept-unknown",
                        );
                    }
                    RefusalCode::Declined | RefusalCode::Policy => return None,
                },
                // Transparent: the destination's error is not in the chain of its own.
                TransferError::Dest(d) => return dest_step(d),
                // Transparent too: the handshake's error inside.
                _ if e.handshake_error().is_some() => {
                    return e.handshake_error().and_then(handshake_step);
                }
                TransferError::Busy => {
                    return Some("try again when the receiver's other transfers are done");
                }
                _ => {}
            }
        }
        if let Some(e) = cause.downcast_ref::<DestError>() {
            return dest_step(e);
        }
        if let Some(e) = cause.downcast_ref::<HandshakeError>() {
            return handshake_step(e);
        }
        if let Some(crate::crypto::identity::IdentityError::Exists(_)) = cause.downcast_ref() {
            return Some("add --force to replace it");
        }
        if let Some(crate::peers::PeersError::NotFound(_)) = cause.downcast_ref() {
            return Some(
                "`conduit peers list` shows the names in the address book, `conduit peers add NAME KEY` adds one",
            );
        }
        if let Some(e) = cause.downcast_ref::<crate::relay::client::JoinError>() {
            use crate::relay::client::JoinError;
            return match e {
                JoinError::Connect { message, .. }
                    if message.contains(crate::transport::PIN_MISMATCH) =>
                {
                    Some(
                        "check the relay pin (--relay-pin, transfer.relay_pin): `conduit relay` prints its pin when it starts",
                    )
                }
                JoinError::Connect { .. } | JoinError::Resolve { .. } | JoinError::Lost { .. } => {
                    Some(
                        "check the relay's address and port, and that UDP to that port is allowed on the way (firewalls)",
                    )
                }
                _ => None,
            };
        }
        if let Some(e) = cause.downcast_ref::<quinn::ConnectionError>() {
            if matches!(e, quinn::ConnectionError::TimedOut) {
                return Some(
                    "run the same commands again when the peer is back (a transfer resumes where it stopped)",
                );
            }
        }
        match crate::transfer::ErrorKind::of(cause) {
            Some(ErrorKind::Timeout) => {
                return Some("run the same commands again (a transfer resumes where it stopped)");
            }
            Some(ErrorKind::Integrity)
                if cause.is::<crate::crypto::stream::StreamError>()
                    || cause.is::<TransferError>() =>
            {
                return Some(
                    "nothing that failed the check was kept; run the transfer again, and if it happens again, check the network path to the peer",
                );
            }
            _ => {}
        }
    }
    None
}

/// What to do about a failed handshake.
fn handshake_step(e: &crate::crypto::handshake::HandshakeError) -> Option<&'static str> {
    use crate::crypto::handshake::{AbortReason, HandshakeError};
    match e {
        HandshakeError::UnknownPeer(_) => Some(
            "add the sender with `conduit peers add NAME KEY` (KEY from `conduit id` there), or receive with --accept-unknown",
        ),
        HandshakeError::CodeMismatch | HandshakeError::PeerAborted(AbortReason::CodeMismatch) => {
            Some(
                "check the code with the other side, letter by letter; a code works once, so start again with a new one",
            )
        }
        HandshakeError::UnsupportedVersion(_)
        | HandshakeError::PeerAborted(AbortReason::UnsupportedVersion) => {
            Some("run the same version of conduit on both sides")
        }
        HandshakeError::PeerAborted(AbortReason::Protocol) => Some(
            "the peer could not read what this side sent: run the same version of conduit on both sides, and see the peer's output",
        ),
        HandshakeError::NoCommonSuite { .. }
        | HandshakeError::PeerAborted(AbortReason::NoCommonSuite) => {
            Some("set the same --suite (transfer.suite) on both sides, or auto on one of them")
        }
        HandshakeError::PostQuantumRequired => Some(
            "upgrade the peer's conduit, or accept a peer without ML-KEM-768 with --post-quantum preferred (transfer.post_quantum)",
        ),
        HandshakeError::PeerAborted(AbortReason::PostQuantumRequired) => Some(
            "the peer requires the post-quantum key exchange: set --post-quantum required or preferred (transfer.post_quantum) on this side",
        ),
        HandshakeError::Authentication => Some(
            "check that the peer's key in the address book is current (`conduit peers list`, `conduit id` there)",
        ),
        _ => None,
    }
}

/// What to do about a destination that failed.
fn dest_step(e: &crate::transfer::dest::DestError) -> Option<&'static str> {
    use crate::transfer::dest::DestError;
    match e {
        DestError::Exists(_) => Some("receive again with --overwrite to replace it"),
        DestError::NotWritable { .. } => {
            Some("make it writable, or receive into another directory with --out DIR")
        }
        DestError::NotADirectory(..) | DestError::IsADirectory(_) => {
            Some("receive into a directory with --out DIR")
        }
        DestError::StorageFull(_) => Some(
            "free space there (or use --out DIR elsewhere), then run the same commands again to resume",
        ),
        _ => None,
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.home.is_some() && !cli.command.uses_home() {
        return Err(Usage(format!(
            "`conduit {}` does not use a home directory: leave out --home",
            cli.command.name()
        ))
        .into());
    }
    let home = || resolve_home(cli.home.clone());
    match cli.command {
        Command::Init(args) => init::run(&home()?, args),
        Command::Keygen(args) => keys::keygen(&home()?, args),
        Command::Id(args) => keys::id(&home()?, args),
        Command::Peers(cmd) => peers::run(&home()?, cmd),
        Command::Send(args) => transfer::send(&home()?, args),
        Command::Receive(args) => receive::receive(&home()?, args),
        Command::Relay(args) => relay::run(args, home().ok()),
        Command::Demo(args) => demo::run(args),
        Command::Completions(args) => meta::completions(args),
        Command::Man(args) => meta::man(args),
        Command::Certs(cmd) => certs::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Audit(cmd) => audit::run(&home()?, cmd),
        Command::Agent(args) => agent::run(&home()?, args),
        Command::Queue(cmd) => agent::queue(&home()?, cmd),
        Command::Console(cmd) => console::run(&home()?, cmd),
        Command::Config(cmd) => config::run(&home()?, cmd),
    }
}

/// No home directory: no `--home`, no `CONDUIT_HOME`, and the OS gives no data directory.
#[derive(Debug, thiserror::Error)]
#[error("cannot find a home directory for conduit: pass --home DIR or set CONDUIT_HOME")]
pub(crate) struct NoHome;

/// The endpoint's home: `flag`, else `CONDUIT_HOME` (when not empty), else the OS data
/// directory; with the user's home directory (`$HOME`) up to which its files are checked.
fn resolve_home(flag: Option<std::path::PathBuf>) -> Result<crate::home::Home, NoHome> {
    let path = match flag {
        Some(path) => path,
        None => match std::env::var_os(crate::home::HOME_ENV).filter(|v| !v.is_empty()) {
            Some(path) => path.into(),
            None => directories::ProjectDirs::from("org", "phi-conduit", "conduit")
                .ok_or(NoHome)?
                .data_dir()
                .to_path_buf(),
        },
    };
    let user = std::env::var_os("HOME").map(std::path::PathBuf::from);
    Ok(crate::home::Home::at(path).with_user_home(user))
}

/// Maps an error chain to the documented exit code: the first cause that is a usage
/// error, an interruption or a refusal of this binary, or a library error whose
/// [`ErrorKind`](crate::transfer::ErrorKind) has a code of its own ([`code_of`]).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<transfer::Interrupted>() {
            return code::INTERRUPTED;
        }
        if cause.is::<Usage>() {
            return code::USAGE;
        }
        // A bad value in an environment variable, as clap reports one it reads.
        if let Some(crate::config::ConfigError::Env { .. }) = cause.downcast_ref() {
            return code::USAGE;
        }
        if cause.is::<transfer::RefusedBy>() {
            return code::REFUSED;
        }
        if cause.is::<crate::crypto::fips::FipsError>()
            || cause.is::<crate::crypto::fips::NotApproved>()
        {
            return code::FIPS;
        }
        if let Some(code) = crate::transfer::ErrorKind::of(cause).and_then(code_of) {
            return code;
        }
    }
    code::FAILURE
}

/// The exit code of each kind of library error; `None`: look further down the chain
/// (and exit with [`code::FAILURE`] if nothing else has a code).
pub fn code_of(kind: crate::transfer::ErrorKind) -> Option<u8> {
    use crate::transfer::ErrorKind;
    match kind {
        ErrorKind::Authentication => Some(code::AUTH),
        ErrorKind::Integrity => Some(code::INTEGRITY),
        ErrorKind::Refused => Some(code::REFUSED),
        ErrorKind::AuditCutShort => Some(code::AUDIT_CUT),
        ErrorKind::Cancelled => Some(code::INTERRUPTED),
        ErrorKind::NotApproved => Some(code::FIPS),
        ErrorKind::Timeout | ErrorKind::Busy | ErrorKind::Protocol | ErrorKind::Other => None,
    }
}

/// No core dumps: a crashed endpoint holds plaintext and keys, a crashed relay
/// ciphertext in flight; none of it may land on disk (best effort: a failure to set the
/// limit is not fatal).
fn no_core_dumps() {
    let none = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    let _ = rustix::process::setrlimit(rustix::process::Resource::Core, none);
}

/// Marks the process not dumpable (`PR_SET_DUMPABLE` 0): no core dump even where the
/// limit above is raised by a core pattern pipe, and other processes of the same user can
/// neither ptrace it nor read its memory through /proc/PID/mem (its /proc files belong
/// to root). Best effort, like the limit.
fn not_dumpable() {
    #[cfg(target_os = "linux")]
    {
        let _ =
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    }
}

/// A closed stdout (`conduit ... | head`) is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::handshake::HandshakeError;
    use crate::crypto::stream::StreamError;
    use crate::session::SessionError;

    #[test]
    fn typed_errors_map_to_documented_exit_codes() {
        let auth = anyhow::Error::from(SessionError::Handshake(HandshakeError::CodeMismatch))
            .context("receiving");
        assert_eq!(exit_code(&auth), code::AUTH);
        let auth = anyhow::Error::from(HandshakeError::Authentication);
        assert_eq!(exit_code(&auth), code::AUTH);
        let auth = anyhow::Error::from(crate::transfer::TransferError::Unauthenticated(
            SessionError::Handshake(HandshakeError::PeerAborted(
                crate::crypto::handshake::AbortReason::CodeMismatch,
            )),
        ));
        assert_eq!(exit_code(&auth), code::AUTH);
        let integrity = anyhow::Error::from(StreamError::Tampered { index: 3 }).context("file a");
        assert_eq!(exit_code(&integrity), code::INTEGRITY);
        let proto = anyhow::Error::from(HandshakeError::Protocol("x"));
        assert_eq!(exit_code(&proto), code::FAILURE);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), code::FAILURE);
    }

    #[test]
    fn the_cli_adds_the_next_step_to_a_refusal() {
        use crate::transfer::protocol::{MAX_DETAIL, Refusal, RefusalCode};
        // (Moved from transfer::protocol: the library's refusal names no flag.)
        let r = Refusal::new(
            RefusalCode::Exists,
            format!("\u{1b}[31m{}", "x".repeat(9000)),
        );
        let shown = transfer::sentence(&r);
        assert!(!shown.contains('\u{1b}'));
        assert!(shown.len() < MAX_DETAIL + 200);
        assert!(shown.ends_with("they can re-run with --overwrite"));
        let unknown = Refusal {
            code: RefusalCode::UnknownSender,
            detail: None,
        };
        assert!(transfer::sentence(&unknown).contains("receive with --yes"));
    }

    #[test]
    fn every_error_kind_has_its_exit_code() {
        use crate::transfer::{ErrorKind, TransferError};
        assert_eq!(code_of(ErrorKind::Authentication), Some(code::AUTH));
        assert_eq!(code_of(ErrorKind::Integrity), Some(code::INTEGRITY));
        assert_eq!(code_of(ErrorKind::Refused), Some(code::REFUSED));
        assert_eq!(code_of(ErrorKind::AuditCutShort), Some(code::AUDIT_CUT));
        assert_eq!(code_of(ErrorKind::Cancelled), Some(code::INTERRUPTED));
        for k in [
            ErrorKind::Timeout,
            ErrorKind::Busy,
            ErrorKind::Protocol,
            ErrorKind::Other,
        ] {
            assert_eq!(code_of(k), None);
        }
        let cancelled = anyhow::Error::from(TransferError::Cancelled).context("receiving");
        assert_eq!(exit_code(&cancelled), code::INTERRUPTED);
        let cut = anyhow::Error::from(crate::audit::AuditError::CutShort("x".into()));
        assert_eq!(exit_code(&cut), code::AUDIT_CUT);
    }

    #[test]
    fn an_error_line_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full");
        let data = crate::transfer::data::DataError::Sink(io);
        let err = anyhow::Error::from(crate::transfer::TransferError::Data {
            file: "a.bin".into(),
            source: data,
        })
        .context("receiving");
        assert_eq!(
            describe(&err),
            "receiving: a.bin: writing the received file: disk full"
        );
        let err = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&err), "outer: inner");
    }

    #[test]
    fn a_redacted_error_shows_no_name_and_keeps_its_exit_code() {
        use crate::audit::names::{MAX_LEARNT, Names};
        use crate::audit::record::ChainKey;
        use crate::transfer::TransferError;
        let names = Names::hashed(std::sync::Arc::new(ChainKey::derive(&[1; 32], b"t")));
        names.learn(["Doe Jane.pdf"]);
        let refused = || {
            anyhow::Error::from(TransferError::Refused(
                crate::transfer::protocol::Refusal::new(
                    crate::transfer::protocol::RefusalCode::Exists,
                    "Doe Jane.pdf",
                ),
            ))
        };
        let err = Redacted::hide(&names, refused());
        let line = describe(&err);
        assert!(
            !line.contains("Doe") && line.contains("already exists"),
            "{line}"
        );
        assert_eq!(exit_code(&err), code::REFUSED);
        // A path that did not parse was never learnt: only the kind of error is shown.
        let bad = crate::transfer::paths::RelPath::parse("/Doe Jane.pdf").unwrap_err();
        let line = describe(&Redacted::hide(&names, TransferError::BadPath(bad).into()));
        assert!(!line.contains("Doe"), "{line}");
        // Past the bound on names learnt, neither is any message text.
        let many: Vec<String> = (0..=MAX_LEARNT).map(|i| format!("f{i}")).collect();
        names.learn(many.iter().map(String::as_str));
        assert!(!names.complete());
        let line = describe(&Redacted::hide(&names, refused()));
        assert_eq!(line, "refused");
        let line = describe(&Redacted::hide(&names, anyhow::anyhow!("Roe.pdf: gone")));
        assert!(!line.contains("Roe"), "{line}");
        // Names shown as they are: the error is untouched.
        assert_eq!(
            describe(&Redacted::hide(&Names::plain(), refused())),
            describe(&refused())
        );
    }
}
