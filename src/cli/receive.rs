//! `conduit receive`, direct or through a relay (`--relay`), and the receiving daemon
//! (`receive --daemon`, at a relay or listening directly), on the library's
//! [`Receiver`]: each connection's offer is accepted (`--yes`, a known sender, or the
//! person at the terminal says so) or refused.
//!
//! A direct receiver authenticates each connection in its own task, so a peer that
//! connects and says nothing costs one pending slot until its handshake timeout, never
//! the receiver: a one-shot receiver keeps waiting for its real sender, a daemon serves
//! others meanwhile (bounded: transfers at once, pending handshakes, connections per IP).

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use crate::audit::Audit;
use crate::audit::names::Names;
use crate::cli::AuditNames;
use crate::cli::Redacted;
use crate::cli::output::{Output, ask_at_terminal, events, report};
use crate::cli::transfer::{
    CLOSE_ON_SIGNAL, Interrupted, RelayFlags, Shutdown, TimeoutFlags, code_wait, from_env,
    relay_unless_direct, runtime, save_peer, spoken, timeouts,
};
use crate::config::{FileConfig, Resolved};
use crate::crypto::identity::Identity;
use crate::crypto::pipeline::CipherPool;
use crate::home::Home;
use crate::peers::AddressBook;
use crate::relay::client::{self as relay_client, RelayOptions};
use crate::relay::hello::Role;
use crate::session::{SessionError, Stage};
use crate::transfer::dest::Destination;
use crate::transfer::protocol::{Refusal, RefusalCode};
use crate::transfer::{CLOSE_CANCELLED, Policy, ReceivePolicy, Receiver, Summary, TransferError};
use crate::transport;

/// Options of `receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Address to listen on for a direct sender (UDP), e.g. 0.0.0.0:7470, [::]:7470 (IPv6
    /// and IPv4 where the system allows it) or a host name's first address (port 0: any);
    /// the addresses a sender can use are printed. Takes precedence over `--relay`,
    /// CONDUIT_RELAY or a relay in conduit.toml.
    #[arg(long, value_name = "HOST:PORT", value_parser = crate::cli::addr::host_port)]
    listen: Option<String>,
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
    /// Seconds the code stays valid: at a relay, how long to keep trying while the sender
    /// is not (yet) waiting there [default: 600, or code_wait_secs in conduit.toml].
    #[arg(long, requires = "code", value_name = "SECS")]
    code_wait: Option<u64>,
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

impl ReceiveArgs {
    /// Forgets the values clap took from environment variables (see
    /// [`crate::cli::transfer::SendArgs::drop_env_values`]).
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
        t.suite = self.suite;
        t.post_quantum = self.post_quantum;
        t.part_max_age_days = self.part_max_age_days;
        t.max_entries = self.max_entries;
        t.max_sessions = self.concurrent;
        t.max_sessions_per_ip = self.max_per_ip;
        t.code_wait_secs = self.code_wait;
        layer.audit.names = self.audit_names.map(crate::audit::NameMode::from);
        layer
    }
}

pub(crate) fn receive(home: &Home, args: ReceiveArgs) -> anyhow::Result<()> {
    let identity = crate::cli::init::identity_for_use(home)?;
    let book = AddressBook::load(home)?;
    let config = crate::cli::resolve(home, &args.flags())?;
    let audit = Audit::open(home, &identity, &book, config.audit_options(args.daemon));
    receive_with(args, identity, book, &config, audit)
}

/// `receive` once the audit is open. Each connection has its own audit session; an
/// error is shown with that session's names hidden (names mode hash).
fn receive_with(
    args: ReceiveArgs,
    identity: Identity,
    mut book: AddressBook,
    config: &Resolved,
    audit: Audit,
) -> anyhow::Result<()> {
    let out = config.out.value.clone();
    let dest = Destination::open(&out)?;
    // Found now, not after a sender has connected (checked again at each offer).
    dest.check_writable()?;
    let timeouts = timeouts(config)?;
    // The settings are checked before the code is asked for.
    let mut relay = relay_unless_direct(
        "receive",
        "--listen",
        args.listen.as_deref(),
        &args.relay,
        config,
    )?;
    // Which sender it is is known only once its session is up: the connection is ready
    // to look for a direct path unless `--path relay` said no for every peer, and the
    // receiver decides per sender (its entry in the address book).
    if let Some(opts) = relay.as_mut() {
        opts.punch = !(config.path.source == crate::config::Source::Flag
            && config.path.value == crate::transport::path::PathPolicy::Relay);
    }
    let code_wait = code_wait(config)?;
    // A FIPS build refuses a code phrase (SPAKE2) before asking for one.
    crate::crypto::fips::refuse_code(args.code.is_some())?;
    crate::crypto::fips::refuse_suite(config.suite.value)?;
    let code = match &args.code {
        None => None,
        Some(Some(text)) if !text.is_empty() => Some(crate::cli::prompt::code_from(text)?),
        // `--code` alone: ask for it, off the command line.
        Some(_) => Some(crate::cli::prompt::ask_code()?),
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
    let yes = config.auto_accept.value;
    let output = Output::of(args.json, args.quiet);
    let mut policy = ReceivePolicy {
        code,
        accept_unknown: config.accept_unknown.value,
        // An unknown sender's offer is looked at with --yes, or by a person asked here.
        unknown_sender_offers: yes || interactive,
        overwrite: config.overwrite.value,
        keep_modes: config.keep_modes.value,
        offers: Policy {
            max_entries: config.max_entries.value,
        },
        timeouts,
        sessions: None,
        suites: config.suite.value,
        post_quantum: config.post_quantum.value,
        path: config.path.value,
        path_from_flag: config.path.source == crate::config::Source::Flag,
    };
    let max_age_days = config.part_max_age_days.value;
    remove_stale_parts(&dest, &audit, max_age_days);
    let rt = runtime()?;
    let limits = DirectLimits {
        sessions: usize::from(sessions),
        per_ip: usize::from(config.max_sessions_per_ip.value.max(1)),
        pending: MAX_PENDING_HANDSHAKES,
    };
    if args.listen.is_some() {
        policy.sessions = Some(Arc::new(tokio::sync::Semaphore::new(limits.sessions)));
    }
    let receiver = Receiver::new(identity, book.clone(), CipherPool::with_all_cores()?)
        .policy(policy)
        .audit(audit)
        .events(events(output, &book));
    let shutdown = {
        let _in = rt.enter();
        Shutdown::install()
    };
    let ctx = Receiving {
        shutdown,
        receiver,
        dest,
        yes,
        interactive,
        json: args.json,
        output,
        max_age_days,
    };
    let received = match (args.listen.as_deref(), relay) {
        (Some(listen), _) => {
            let listen = rt.block_on(crate::cli::addr::listen_addr(listen))?;
            let daemon = args.daemon;
            let ctx = Arc::new(ctx);
            let served = rt.block_on(serve_direct(listen, Arc::clone(&ctx), limits, daemon));
            flush_suppressed(&rt, ctx.audit());
            match served? {
                Some(s) => s,
                None => return Ok(()),
            }
        }
        (None, Some(opts)) if args.daemon => {
            return rt.block_on(daemon(Arc::new(ctx), opts, usize::from(sessions)));
        }
        (None, Some(mut opts)) => {
            if ctx.receiver.receive_policy().code.is_some() {
                // The sender may not be at the relay yet: it shows the code once there,
                // but the code may have come by another way.
                opts.wait = code_wait;
            }
            let got = rt.block_on(receive_at_relay(&ctx, &opts));
            flush_suppressed(&rt, ctx.audit());
            got?
        }
        (None, None) => anyhow::bail!("--listen or --relay is required"),
    };
    let (summary, names) = received;
    report("received", &summary, output, &names);
    if let Some(name) = &args.save_peer {
        save_peer(&mut book, name, &summary)?;
    }
    Ok(())
}

/// A one-shot receive at a relay: join, receive; a connection whose peer never
/// authenticates (a timeout, a failed handshake) does not use the receiver up: it joins
/// again and keeps waiting.
async fn receive_at_relay(
    ctx: &Receiving,
    opts: &RelayOptions,
) -> anyhow::Result<(Summary, Names)> {
    let rendezvous = ctx.receiver.rendezvous();
    let (role, single_use) = match &ctx.receiver.receive_policy().code {
        Some(_) => (Role::Connect, true),
        None => (Role::Listen, false),
    };
    // Said once the relay has our Hello (never when it cannot be reached), and once.
    let told = std::sync::atomic::AtomicBool::new(false);
    let waiting = |relay: &str| {
        if told.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if ctx.json {
            println!("{}", json!({"event": "joining", "relay": relay}));
        } else {
            println!("waiting at relay {relay}");
        }
    };
    loop {
        // A key's listener proves it holds the key; a code's nameplate is joined.
        let j = ctx
            .shutdown
            .race(async {
                let joined = if role == Role::Listen && !single_use {
                    relay_client::listen_reporting(opts, ctx.receiver.identity(), &waiting).await
                } else {
                    relay_client::join_reporting(opts, role, single_use, rendezvous, &waiting).await
                };
                let j = match joined {
                    Ok(j) => j,
                    Err(
                        e @ relay_client::JoinError::Refused {
                            refusal: crate::relay::hello::Refusal::NoListener,
                            ..
                        },
                    ) if single_use => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "no sender waits at the relay with this code (tried for {}): check the code, or ask the sender to start again",
                            spoken(opts.wait)
                        )));
                    }
                    Err(e) => return Err(e.into()),
                };
                Ok(j)
            })
            .await?;
        // On Ctrl-C the partial files and their resume records stay.
        match ctx.one(&j.connection, ctx.shutdown.signalled()).await {
            Ok((summary, names)) => {
                j.endpoint.wait_idle().await;
                return Ok((summary, names));
            }
            Err((TransferError::Cancelled, _)) => {
                let _ = tokio::time::timeout(CLOSE_ON_SIGNAL, j.endpoint.wait_idle()).await;
                return Err(Interrupted.into());
            }
            Err((e, names)) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), j.endpoint.wait_idle()).await;
                if !e.before_authentication() {
                    return Err(Redacted::hide(&names, e.into()));
                }
                notice(ctx.json, None, e, &names, true);
            }
        }
    }
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
    let e = crate::cli::describe_with_next_step(&Redacted::hide(names, e.into()));
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
struct Receiving {
    /// Ctrl-C or SIGTERM.
    shutdown: Shutdown,
    receiver: Receiver,
    dest: Destination,
    /// `--yes`: accept every offer that gets this far without asking.
    yes: bool,
    /// Ask the person at the terminal about each offer.
    interactive: bool,
    json: bool,
    /// JSON, for people, or quiet (`--json`, `--quiet`).
    output: Output,
    /// `--part-max-age-days`.
    max_age_days: u32,
}

impl Receiving {
    fn audit(&self) -> &Audit {
        self.receiver.audit_trail()
    }

    /// One connection's transfer: the offer, the decision (`--yes`, the person at the
    /// terminal, or the policy: an unknown sender's offer only gets here with one of
    /// those), then the files. With the names to hide in what is printed about it.
    async fn one(
        &self,
        conn: &quinn::Connection,
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(Summary, Names), (TransferError, Names)> {
        let mut offer = match self.receiver.receive(conn, cancel).await {
            Ok(offer) => offer,
            Err(e) => return Err((e, self.audit().names())),
        };
        let names = offer.names().clone();
        let accept = if self.yes || !self.interactive {
            true
        } else {
            // Absolute: "accept into ." says nothing.
            let out = self.dest.root().to_path_buf();
            let asked = tokio::task::spawn_blocking(move || ask_at_terminal(&out));
            match offer.until_cancelled(asked).await {
                Ok(answer) => answer.unwrap_or(false),
                Err(e) => return Err((e, names)),
            }
        };
        let result = if accept {
            // It can have changed while we waited (remounted read-only, permissions).
            if let Err(e) = self.dest.check_writable() {
                let why = Refusal::new(RefusalCode::Policy, "the receiver cannot write there");
                let _ = offer.refuse(why).await;
                return Err((TransferError::Dest(e), names));
            }
            offer.accept(&self.dest).await
        } else {
            let declined = Refusal::new(RefusalCode::Declined, "declined by the receiving user");
            Err(offer.refuse(declined).await)
        };
        match result {
            Ok(summary) => Ok((summary, names)),
            Err(e) => Err((e, names)),
        }
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
            "removed the partial file of {} ({}): older than {days} days",
            if names.hides() {
                names.tag(&r.path)
            } else {
                crate::transfer::paths::escape(&r.path)
            },
            crate::cli::output::size(r.bytes)
        );
        if let Err(e) = audit.partial_removed(&r.path, r.bytes, &reason) {
            eprintln!("warning: {e}");
        }
    }
}

/// Removes leftover partial files once a day (a daemon; at start `receive` already did).
fn spawn_daily_sweep(ctx: &Arc<Receiving>) -> tokio::task::JoinHandle<()> {
    let ctx = Arc::clone(ctx);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
            let ctx = Arc::clone(&ctx);
            let _ = tokio::task::spawn_blocking(move || {
                remove_stale_parts(&ctx.dest, ctx.audit(), ctx.max_age_days);
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
    ctx: Arc<Receiving>,
    limits: DirectLimits,
    daemon: bool,
) -> anyhow::Result<Option<(Summary, Names)>> {
    let endpoint =
        transport::direct_server_with(listen, ctx.receiver.receive_policy().timeouts.idle)?;
    let addr = endpoint.local_addr()?;
    // Bound to all interfaces: which of this host's addresses to give the sender.
    let reachable = crate::cli::addr::reachable_at(addr);
    if ctx.json {
        let addrs: Vec<String> = reachable.iter().map(ToString::to_string).collect();
        println!(
            "{}",
            json!({"event": "listening", "addr": addr.to_string(), "addrs": addrs, "daemon": daemon, "sessions": limits.sessions})
        );
    } else {
        if daemon {
            println!(
                "listening on {addr} ({} at once); Ctrl-C to stop",
                limits.sessions
            );
        } else {
            println!("listening on {addr}");
        }
        // `--quiet`: the address above (a port 0 is chosen here), not the advice.
        if !matches!(ctx.output, Output::Quiet) {
            print_send_hint(&reachable, ctx.receiver.receive_policy().code.is_some());
        }
    }
    let sweeping = daemon.then(|| spawn_daily_sweep(&ctx));
    if daemon {
        print_head(ctx.audit(), "start", ctx.json).await;
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let shutdown = ctx.shutdown.signalled();
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
                let (ctx, stopping) = (Arc::clone(&ctx), stopping.clone());
                tasks.spawn(async move {
                    (from, serve_connection(incoming, &ctx, stopping).await)
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
                match settle(from, result, daemon, false, &ctx) {
                    Settled::Received(got) => break Ok(Some(got)),
                    Settled::Fatal(e) => break Err(e),
                    Settled::Reported => {}
                }
            }
            () = &mut shutdown => {
                // Transfers close their connection and record the interruption.
                let _ = stop.send(true);
                // Connections that end while we drain (a transfer that completes, a
                // handshake that times out) are still reported: the select above may have
                // picked the signal over their result.
                let mut finished = None;
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(done) = tasks.join_next().await {
                        let Ok((from, result)) = done else { continue };
                        if let Settled::Received(got) = settle(from, result, daemon, true, &ctx) {
                            finished = Some(got);
                        }
                    }
                })
                .await;
                tasks.shutdown().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
                if let Some(s) = sweeping {
                    s.abort();
                }
                // A daemon stopping is its normal end; a one-shot receiver was interrupted.
                if daemon {
                    if let Err(e) = ctx.audit().flush_suppressed().await {
                        eprintln!("warning: {e}");
                    }
                    print_head(ctx.audit(), "stop", ctx.json).await;
                    return Ok(None);
                }
                // A one-shot receiver whose transfer completed as the signal came is done.
                if let Some(got) = finished {
                    return Ok(Some(got));
                }
                return Err(Interrupted.into());
            }
        }
    };
    // A one-shot receiver is done: connections still in their handshake are dropped.
    tasks.shutdown().await;
    endpoint.close(CLOSE_CANCELLED.into(), b"receiver done");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    result
}

/// What one finished connection means for a direct receiver's loop.
enum Settled {
    /// A one-shot receiver's transfer: it is done.
    Received((Summary, Names)),
    /// A one-shot receiver's transfer failed after the sender was authenticated: the
    /// command fails with it.
    Fatal(anyhow::Error),
    /// Reported (a daemon's transfer, a failure shown as a notice) or nothing to say (an
    /// interrupted one): serving goes on.
    Reported,
}

/// Reports or returns the result of the connection from `from`. While `draining` after
/// a signal, a failure is only a notice (the receiver is ending anyway).
fn settle(
    from: SocketAddr,
    result: Result<(Summary, Names), Served>,
    daemon: bool,
    draining: bool,
    ctx: &Receiving,
) -> Settled {
    match result {
        Ok(got) if !daemon => Settled::Received(got),
        Ok((summary, names)) => {
            report("received", &summary, ctx.output, &names);
            Settled::Reported
        }
        Err(Served::Interrupted) => Settled::Reported,
        Err(Served::Failed(e, names)) if !daemon && !draining && !e.before_authentication() => {
            Settled::Fatal(Redacted::hide(&names, e.into()))
        }
        Err(Served::Failed(e, names)) => {
            notice(ctx.json, Some(from), e, &names, !daemon && !draining);
            Settled::Reported
        }
    }
}

/// Tells the person at the receiver what to give the sender: the addresses (UDP) this
/// receiver can be reached at and the command to run there.
fn print_send_hint(reachable: &[SocketAddr], code: bool) {
    let list: Vec<String> = reachable.iter().map(ToString::to_string).collect();
    let Some(first) = list.first() else { return };
    println!(
        "senders can reach this receiver at (UDP): {}",
        list.join(", ")
    );
    if code {
        println!("the sender runs: conduit send --code FILES --direct {first}");
    } else {
        println!(
            "the sender runs: conduit send FILES --to NAME --direct {first} (NAME: this endpoint in their address book)"
        );
    }
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
    ctx: &Receiving,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(Summary, Names), Served> {
    let timeouts = &ctx.receiver.receive_policy().timeouts;
    // A QUIC handshake that fails proves nothing about the peer.
    let failed = |e: quinn::ConnectionError| {
        Served::Failed(
            TransferError::Unauthenticated(SessionError::Io(e.into())),
            ctx.audit().names(),
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
                ctx.audit().names(),
            ));
        }
    };
    // Stopped: the partial files and their resume records stay.
    let stopped = async move {
        let _ = stopping.changed().await;
    };
    match ctx.one(&conn, stopped).await {
        Ok(got) => Ok(got),
        Err((TransferError::Cancelled, _)) => Err(Served::Interrupted),
        Err((e, names)) => Err(Served::Failed(e, names)),
    }
}

/// Longest wait between two attempts to reach the relay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Serves transfers at the relay with `slots` listeners until Ctrl-C or SIGTERM.
async fn daemon(ctx: Arc<Receiving>, opts: RelayOptions, slots: usize) -> anyhow::Result<()> {
    let relay = opts.choose(&ctx.receiver.rendezvous())?;
    if ctx.json {
        println!(
            "{}",
            json!({"event": "daemon", "relay": relay, "slots": slots})
        );
    } else {
        println!("receiving at relay {relay} ({slots} at once); Ctrl-C to stop");
    }
    print_head(ctx.audit(), "start", ctx.json).await;
    let sweeping = spawn_daily_sweep(&ctx);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let opts = Arc::new(opts);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..slots {
        tasks.spawn(daemon_slot(
            Arc::clone(&ctx),
            Arc::clone(&opts),
            stopping.clone(),
        ));
    }
    ctx.shutdown.signalled().await;
    sweeping.abort();
    // Slots in a transfer close it and record the interruption; then they end.
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
    if let Err(e) = ctx.audit().flush_suppressed().await {
        eprintln!("warning: {e}");
    }
    print_head(ctx.audit(), "stop", ctx.json).await;
    Ok(())
}

/// One listener slot of the daemon: wait at the relay, receive, repeat. A peer that says
/// nothing holds the slot at most for the handshake timeout.
async fn daemon_slot(
    ctx: Arc<Receiving>,
    opts: Arc<RelayOptions>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let joined = tokio::select! {
            j = relay_client::listen(&opts, ctx.receiver.identity()) => j,
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
        // Stopped: the transfer is closed and its interruption recorded; the slot ends.
        let mut stop = stopping.clone();
        let stopped = async move {
            let _ = stop.changed().await;
        };
        match ctx.one(&j.connection, stopped).await {
            Ok((summary, names)) => report("received", &summary, ctx.output, &names),
            Err((TransferError::Cancelled, _)) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), j.endpoint.wait_idle()).await;
                return;
            }
            Err((e, names)) => notice(ctx.json, None, e, &names, false),
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), j.endpoint.wait_idle()).await;
    }
}
