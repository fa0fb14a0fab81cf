//! The relay server: accepts client connections, reads each Hello under a timeout,
//! checks the access token, pairs clients through the rendezvous [`Table`], and runs
//! each pair's [`splice`](crate::relay::splice) as a supervised session. On shutdown it stops accepting,
//! sends waiting clients away, lets running sessions finish up to the drain deadline,
//! then closes everything.
//!
//! Conduit rules (docs/ARCHITECTURE.md, "The relay's conduit rules") as this code keeps them: the relay holds no key
//! and only copies QUIC stream bytes (end-to-end ciphertext); nothing is written to
//! disk; memory is bounded by [`Limits`]; log events carry session ids, byte totals,
//! durations and close reasons only.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use quinn::{Connection, RecvStream, SendStream};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::relay::config::Limits;
use crate::relay::expiring::saturating_add;
use crate::relay::hello::Grant;
use crate::relay::hello::{Hello, MAX_HELLO, PAIRED, Refusal, Role};
use crate::relay::metrics::Metrics;
use crate::relay::pairing::{Arrival, Table};
use crate::relay::proof::{Challenge, PROOF_LEN};
use crate::relay::ratelimit::{Strikes, source_of};
use crate::relay::splice::{Tap, splice_with};
use crate::relay::switch::{SharedSwitch, SwitchLimits};
use crate::relay::tokens::Tokens;
use crate::transport::{self, ServerTls, TransportError};

/// Receives the relay's log events (JSON objects with an `event` field).
pub type Logger = Arc<dyn Fn(Value) + Send + Sync>;

/// A bound relay, ready to [`run`](Relay::run).
pub struct Relay {
    endpoint: quinn::Endpoint,
    state: Arc<State>,
}

struct State {
    table: Mutex<Table<Waiting>>,
    /// Connections per source not (yet) in a session.
    unpaired: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// Connections per source, in a session or not.
    per_source: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// Sessions per source (a session counts once against each source among its ends).
    in_sessions: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// SHA-256 of the relay's certificate (bound into listener proofs).
    cert: [u8; 32],
    strikes: Mutex<Strikes>,
    metrics: Arc<Metrics>,
    limits: Limits,
    tokens: Option<Tokens>,
    connections: Arc<Semaphore>,
    sessions: Arc<Semaphore>,
    log: Logger,
    tap: Option<Arc<dyn Tap>>,
    /// The datagram switch on the relay's UDP port.
    switch: Arc<SharedSwitch>,
}

/// A client waiting for its peer, as the table holds it.
struct Waiting {
    conn: Connection,
    /// Where the client connects from.
    ip: std::net::IpAddr,
    /// It came on a single-use rendezvous id (a code's nameplate).
    single_use: bool,
    /// It asked for an allocation on the switch instead of a splice.
    switch: bool,
    hello_reply: SendStream,
    taken: Option<oneshot::Sender<()>>,
    since: Instant,
    _slot: OwnedSemaphorePermit,
    _open: Gauge,
    /// Counts against the source's unpaired connections until the session starts.
    unpaired: Option<IpSlot>,
    /// Counts against the source's connections while the connection lives.
    _source: IpSlot,
}

/// Which per-source count an [`IpSlot`] holds.
#[derive(Clone, Copy)]
enum Count {
    Unpaired,
    Connections,
    Sessions,
}

/// One connection counted against one of its source's limits while alive (the source is
/// the address, or its /64 for IPv6).
struct IpSlot {
    state: Arc<State>,
    source: std::net::IpAddr,
    count: Count,
}

impl State {
    fn counts(&self, count: Count) -> &Mutex<std::collections::HashMap<std::net::IpAddr, usize>> {
        match count {
            Count::Unpaired => &self.unpaired,
            Count::Connections => &self.per_source,
            Count::Sessions => &self.in_sessions,
        }
    }
}

impl IpSlot {
    fn take(state: &Arc<State>, ip: std::net::IpAddr, count: Count) -> Option<Self> {
        let source = source_of(ip);
        let max = match count {
            Count::Unpaired => state.limits.max_unpaired_per_ip,
            Count::Connections => state.limits.max_connections_per_ip,
            Count::Sessions => state.limits.max_sessions_per_source,
        };
        let mut map = state
            .counts(count)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(source).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            state: Arc::clone(state),
            source,
            count,
        })
    }
}

/// What a session holds while it runs: one of the relay's session slots, and one of
/// each of its ends' sources (one if both ends are at the same source).
struct SessionSlots {
    _relay: OwnedSemaphorePermit,
    _sources: (IpSlot, Option<IpSlot>),
}

impl SessionSlots {
    /// The slots for a session between clients at `a` and `b`, or `None` if the relay
    /// is at its session limit or either source at its own. Takes nothing on failure.
    fn take(state: &Arc<State>, a: std::net::IpAddr, b: std::net::IpAddr) -> Option<Self> {
        let relay = Arc::clone(&state.sessions).try_acquire_owned().ok()?;
        let first = IpSlot::take(state, a, Count::Sessions)?;
        let second = if source_of(a) == source_of(b) {
            None
        } else {
            Some(IpSlot::take(state, b, Count::Sessions)?)
        };
        Some(SessionSlots {
            _relay: relay,
            _sources: (first, second),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self
            .state
            .counts(self.count)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

impl Relay {
    /// Binds the relay on `addr` with its TLS certificate.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use phi_conduit::relay::{config::Limits, server::Relay};
    /// use phi_conduit::transport::ServerTls;
    ///
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// let tls = ServerTls::self_signed(&["localhost"])?;
    /// let relay = Relay::bind(([127, 0, 0, 1], 0).into(), tls, Limits::default(), None, Arc::new(|_| {}))?;
    /// let addr = relay.local_addr()?;
    /// assert_ne!(addr.port(), 0);
    /// // Runs until the future resolves (SIGTERM in `conduit relay`), then drains.
    /// relay.run(async {}).await;
    /// # Ok(()) }
    /// ```
    pub fn bind(
        addr: SocketAddr,
        tls: ServerTls,
        limits: Limits,
        tokens: Option<Tokens>,
        log: Logger,
    ) -> Result<Self, TransportError> {
        let cert = tls.pin();
        let switch = Arc::new(SharedSwitch::new(SwitchLimits {
            max_allocations: limits.max_sessions.saturating_mul(2),
            idle: limits.idle_timeout,
            ..SwitchLimits::default()
        }));
        let divert: Arc<dyn transport::demux::Divert> = switch.clone();
        let (endpoint, _socket) =
            transport::relay_server_diverting(addr, tls, limits.transport_config(), divert)?;
        let metrics = Arc::new(Metrics::default());
        let _ = metrics.switch.set(Arc::clone(&switch));
        let state = Arc::new(State {
            table: Mutex::new(Table::new(
                limits.max_waiting_per_ip,
                limits.max_waiting_per_rendezvous,
            )),
            unpaired: Mutex::default(),
            per_source: Mutex::default(),
            in_sessions: Mutex::default(),
            cert,
            strikes: Mutex::new(Strikes::new(
                limits.max_strikes,
                limits.strike_window,
                crate::relay::ratelimit::MAX_SOURCES,
            )),
            metrics,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            sessions: Arc::new(Semaphore::new(limits.max_sessions)),
            limits,
            tokens,
            log,
            tap: None,
            switch,
        });
        Ok(Relay { endpoint, state })
    }

    /// Installs a [`Tap`] on every spliced session, and with it serves clients that ask
    /// for the splice (the session layer's adversarial tests, built on the library;
    /// `conduit relay` never does: without a tap such a client is refused
    /// [`Refusal::OldProtocol`]). Call before [`run`](Relay::run).
    pub fn with_tap(mut self, tap: Arc<dyn Tap>) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.tap = Some(tap);
        }
        self
    }

    /// Installs a [`SwitchTap`](crate::relay::switch::SwitchTap) on the datagram switch
    /// (tests and diagnostics built on the library; `conduit relay` never does).
    pub fn with_switch_tap(self, tap: Arc<dyn crate::relay::switch::SwitchTap>) -> Self {
        self.state.switch.set_tap(tap);
        self
    }

    /// The address the relay listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The relay's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.state.metrics)
    }

    /// Serves until `shutdown` completes, then drains: no new clients, waiting clients
    /// closed with [`Refusal::ShuttingDown`], running sessions given up to the drain
    /// timeout, then every connection closed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Relay { endpoint, state } = self;
        tokio::pin!(shutdown);
        let mut sweep = tokio::time::interval(SWEEP);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = sweep.tick() => {
                    let now = Instant::now();
                    state.switch.with(|s| s.expire(now));
                }
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let ip = incoming.remote_address().ip();
                    let banned = state
                        .strikes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .banned(ip, Instant::now());
                    if banned {
                        state.metrics.reject(Refusal::RateLimited);
                        incoming.refuse();
                        continue;
                    }
                    // QUIC Retry: a client proves it receives at its address before the
                    // relay keeps any state for it (no spoofed floods of half-open
                    // connections); one extra round trip per connection.
                    if !incoming.remote_address_validated() {
                        let _ = incoming.retry();
                        continue;
                    }
                    let Some(source_slot) = IpSlot::take(&state, ip, Count::Connections) else {
                        state.metrics.reject(Refusal::TooManyWaiting);
                        incoming.refuse();
                        continue;
                    };
                    let Some(ip_slot) = IpSlot::take(&state, ip, Count::Unpaired) else {
                        state.metrics.reject(Refusal::TooManyWaiting);
                        incoming.refuse();
                        continue;
                    };
                    match Arc::clone(&state.connections).try_acquire_owned() {
                        Ok(slot) => {
                            let slots = (slot, ip_slot, source_slot);
                            tokio::spawn(client(Arc::clone(&state), incoming, slots));
                        }
                        Err(_) => {
                            state.metrics.reject(Refusal::Busy);
                            incoming.refuse();
                        }
                    }
                }
            }
        }
        state.metrics.draining.store(true, Relaxed);
        endpoint.set_server_config(None);
        let waiting = state
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain();
        for w in waiting {
            refuse(&state, &w.conn, Refusal::ShuttingDown);
        }
        let running = state.metrics.sessions_active.load(Relaxed);
        (state.log)(json!({"event": "draining", "sessions": running}));
        let deadline = saturating_add(Instant::now(), state.limits.drain_timeout);
        while state.metrics.sessions_active.load(Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = state.metrics.sessions_active.load(Relaxed);
        let r = Refusal::ShuttingDown;
        endpoint.close(r.code().into(), r.label().as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        (state.log)(json!({"event": "stopped", "sessions_cut": left}));
    }
}

fn refuse(state: &State, conn: &Connection, r: Refusal) {
    if matches!(
        r,
        Refusal::RendezvousTaken | Refusal::Token | Refusal::BadHello | Refusal::BadProof
    ) {
        strike(state, conn.remote_address().ip());
    }
    state.metrics.reject(r);
    conn.close(r.code().into(), r.label().as_bytes());
    (state.log)(json!({"event": "refused", "reason": r.label()}));
}

/// Counts one strike against the source of `ip`.
fn strike(state: &State, ip: std::net::IpAddr) {
    let mut strikes = state.strikes.lock().unwrap_or_else(PoisonError::into_inner);
    strikes.strike(ip, Instant::now());
    let sources = u64::try_from(strikes.sources()).unwrap_or(u64::MAX);
    state.metrics.strike_sources.store(sources, Relaxed);
}

/// Holds one unit of a gauge of [`Metrics`] while alive.
struct Gauge {
    metrics: Arc<Metrics>,
    which: fn(&Metrics) -> &AtomicU64,
}

impl Gauge {
    fn up(metrics: &Arc<Metrics>, which: fn(&Metrics) -> &AtomicU64) -> Self {
        which(metrics).fetch_add(1, Relaxed);
        Gauge {
            metrics: Arc::clone(metrics),
            which,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.which)(&self.metrics).fetch_sub(1, Relaxed);
    }
}

/// One client connection, from its first packet to pairing (or refusal).
async fn client(
    state: Arc<State>,
    incoming: quinn::Incoming,
    (slot, ip_slot, source_slot): (OwnedSemaphorePermit, IpSlot, IpSlot),
) {
    let ip = incoming.remote_address().ip();
    let hello_timeout = state.limits.hello_timeout;
    let Ok(connecting) = incoming.accept() else {
        return;
    };
    let conn = match tokio::time::timeout(hello_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(_)) => return,
        Err(_) => {
            state.metrics.reject(Refusal::HelloTimeout);
            return;
        }
    };
    let metrics = Arc::clone(&state.metrics);
    let open = Gauge::up(&metrics, |m| &m.connections);
    // The Hello, the token and (for a listener on a key) the proof, all within the
    // Hello timeout.
    let admitted = tokio::time::timeout(hello_timeout, admit(&state, &conn)).await;
    let (reply, hello) = match admitted {
        Err(_) => return refuse(&state, &conn, Refusal::HelloTimeout),
        Ok(Err(r)) => return refuse(&state, &conn, r),
        Ok(Ok(x)) => x,
    };
    if metrics.draining.load(Relaxed) {
        return refuse(&state, &conn, Refusal::ShuttingDown);
    }
    let (taken, was_taken) = oneshot::channel();
    let me = Waiting {
        conn: conn.clone(),
        ip,
        single_use: hello.single_use,
        switch: hello.switch,
        hello_reply: reply,
        taken: Some(taken),
        since: Instant::now(),
        _slot: slot,
        _open: open,
        unpaired: Some(ip_slot),
        _source: source_slot,
    };
    let now = Instant::now();
    // A session slot is taken at pairing, under the table's lock: a connector that would
    // pair takes the relay's slot and one of each end's source, or is refused `busy`
    // and the listener it would have met waits on. A listener never needs one to wait.
    let arrived = {
        let mut table = state.table.lock().unwrap_or_else(PoisonError::into_inner);
        let partner = table.partner(&hello, now).map(|w| w.ip);
        let slots = partner.map(|other| SessionSlots::take(&state, other, ip));
        if let Some(None) = slots {
            Err(me)
        } else {
            let arrival = table.arrive(&hello, ip, now, me);
            let burned = u64::try_from(table.burned()).unwrap_or(u64::MAX);
            metrics.burned.store(burned, Relaxed);
            Ok((arrival, slots.flatten()))
        }
    };
    let (arrival, slots) = match arrived {
        Ok(x) => x,
        Err(me) => {
            refuse(&state, &conn, Refusal::Busy);
            drop(me);
            return;
        }
    };
    // Spending code nameplates costs strikes (docs/SECURITY.md): a single-use listener
    // one when it waits, a connector one per nameplate it finds empty (not per retry of
    // the same one) and one per code pairing.
    match &arrival {
        Arrival::Refused(Refusal::NoListener, _) if hello.single_use => {
            let mut strikes = state.strikes.lock().unwrap_or_else(PoisonError::into_inner);
            strikes.missed(ip, &hello.rendezvous, now);
            let sources = u64::try_from(strikes.sources()).unwrap_or(u64::MAX);
            metrics.strike_sources.store(sources, Relaxed);
        }
        Arrival::Wait(_) if hello.single_use => strike(&state, ip),
        Arrival::Paired(first, _) if hello.single_use || first.single_use => strike(&state, ip),
        _ => {}
    }
    let ticket = match arrival {
        // Close with the refusal first: dropping the Waiting ends its Hello stream, which
        // the client must not see before the close that says why.
        Arrival::Refused(r, me) => {
            refuse(&state, &conn, r);
            drop(me);
            return;
        }
        Arrival::Paired(first, me) => {
            // `partner` named the waiter `arrive` paired with, so the slots are taken;
            // should they not be, they are taken now or both clients are sent away.
            let slots = match slots {
                Some(s) => Some(s),
                None => SessionSlots::take(&state, first.ip, me.ip),
            };
            let Some(slots) = slots else {
                for c in [&first.conn, &me.conn] {
                    refuse(&state, c, Refusal::Busy);
                }
                return;
            };
            return session(state, first, me, slots).await;
        }
        Arrival::Wait(ticket) => ticket,
        Arrival::Replaced(ticket, old) => {
            refuse(&state, &old.conn, Refusal::Replaced);
            drop(old);
            ticket
        }
    };
    let _waiting = Gauge::up(&metrics, |m| &m.waiting);
    tokio::select! {
        _ = was_taken => {}
        () = tokio::time::sleep(state.limits.pairing_timeout) => {
            let w = state.table.lock().unwrap_or_else(PoisonError::into_inner).leave(&hello.rendezvous, ticket);
            if let Some(w) = w {
                refuse(&state, &w.conn, Refusal::PairingTimeout);
            }
        }
        _ = conn.closed() => {
            let _ = state.table.lock().unwrap_or_else(PoisonError::into_inner).leave(&hello.rendezvous, ticket);
        }
    }
}

/// Reads the Hello, checks the token, and has a listener on a key's rendezvous id prove
/// it holds the key. The answer stream is handed back for [`PAIRED`].
async fn admit(state: &State, conn: &Connection) -> Result<(SendStream, Hello), Refusal> {
    let (mut send, mut recv, hello) = read_hello(conn).await.map_err(|()| Refusal::BadHello)?;
    // The relay forwards end-to-end connections on its switch; it terminates QUIC for a
    // splice only when built for the session layer's adversarial tests (a tap).
    if !hello.switch && state.tap.is_none() {
        return Err(Refusal::OldProtocol);
    }
    if let Some(tokens) = &state.tokens {
        if !tokens.accepts(&hello.token) {
            return Err(Refusal::Token);
        }
    }
    if hello.role == Role::Listen && !hello.single_use {
        prove(state, &mut send, &mut recv, &hello).await?;
    }
    Ok((send, hello))
}

/// The listener proof (docs/PROTOCOL.md, "Listener proof"): challenge, answer, check.
async fn prove(
    state: &State,
    send: &mut SendStream,
    recv: &mut RecvStream,
    hello: &Hello,
) -> Result<(), Refusal> {
    let challenge = Challenge::new(hello.rendezvous, state.cert).map_err(|_| Refusal::Busy)?;
    send.write_all(&challenge.encode())
        .await
        .map_err(|_| Refusal::BadProof)?;
    let mut proof = [0u8; PROOF_LEN];
    recv.read_exact(&mut proof)
        .await
        .map_err(|_| Refusal::BadProof)?;
    challenge
        .verify(&proof)
        .map(drop)
        .map_err(|_| Refusal::BadProof)
}

/// Reads the Hello through the frame decoder, limited to [`MAX_HELLO`]: a longer length
/// field is refused before the body is read.
async fn read_hello(conn: &Connection) -> Result<(SendStream, RecvStream, Hello), ()> {
    let (send, mut recv) = conn.accept_bi().await.map_err(drop)?;
    let body = crate::session::read_frame_within(&mut recv, MAX_HELLO)
        .await
        .map_err(drop)?;
    let hello = Hello::decode(&body).map_err(drop)?;
    Ok((send, recv, hello))
}

/// Runs one paired session: tells both clients, splices them, logs the totals.
async fn session(state: Arc<State>, mut first: Waiting, mut second: Waiting, _slots: SessionSlots) {
    // In a session now: no longer counted against the sources' unpaired limits, and
    // given a session's windows and streams before either side hears it is paired.
    first.unpaired = None;
    second.unpaired = None;
    for w in [&first, &second] {
        state.limits.open_up(&w.conn);
    }
    let single_use = first.single_use || second.single_use;
    let metrics = Arc::clone(&state.metrics);
    let waited = first.since.elapsed();
    metrics.pairing_wait_micros.fetch_add(
        u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
        Relaxed,
    );
    metrics.pairings.fetch_add(1, Relaxed);
    if let Some(t) = first.taken.take() {
        let _ = t.send(());
    }
    let id = session_id();
    if first.switch || second.switch {
        return switched(state, first, second, id, waited).await;
    }
    let mut told = true;
    for w in [&mut first, &mut second] {
        told &= w.hello_reply.write_all(&[PAIRED]).await.is_ok() && w.hello_reply.finish().is_ok();
    }
    if !told {
        for c in [&first.conn, &second.conn] {
            refuse(&state, c, Refusal::PeerLost);
        }
        return;
    }
    metrics.sessions_total.fetch_add(1, Relaxed);
    let _active = Gauge::up(&metrics, |m| &m.sessions_active);
    (state.log)(
        json!({"event": "session_open", "session": id, "pairing_wait_s": waited.as_secs_f64()}),
    );
    let start = Instant::now();
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ended = splice_with(
        first.conn.clone(),
        second.conn.clone(),
        Arc::clone(&total),
        state.tap.clone(),
    )
    .await;
    metrics
        .bytes_relayed
        .fetch_add(total.load(Relaxed), Relaxed);
    // A code session that ended in an error (a wrong code: the PAKE or the handshake
    // failed) is a failed guess: one more strike for the connector's source.
    if single_use && ended.code != 0 {
        strike(&state, second.ip);
    }
    (state.log)(json!({
        "event": "session_closed",
        "session": id,
        "seconds": start.elapsed().as_secs_f64(),
        "bytes_listener_to_connector": ended.a_to_b,
        "bytes_connector_to_listener": ended.b_to_a,
        "close_code": ended.code,
        "reason": ended.reason,
    }));
}

/// How often idle allocations are swept, and a switched session looks for a client whose
/// control connection moved to a new address (its NAT rebound).
const SWEEP: Duration = Duration::from_millis(500);

/// A pairing on the datagram switch: grants each client an allocation bound to the address
/// its control connection comes from, tells it (after [`PAIRED`]), follows either
/// connection to a new address, and releases both allocations when either connection
/// ends. Nothing of the clients' traffic passes through this task.
async fn switched(
    state: Arc<State>,
    first: Waiting,
    second: Waiting,
    id: String,
    waited: Duration,
) {
    let metrics = Arc::clone(&state.metrics);
    if first.switch != second.switch {
        // Clients of one build ask alike; a mix cannot be served either way.
        for c in [&first.conn, &second.conn] {
            refuse(&state, c, Refusal::PeerLost);
        }
        return;
    }
    let mut at = [first.conn.remote_address(), second.conn.remote_address()];
    let pair = match state.switch.with(|s| s.grant(at[0], at[1], Instant::now())) {
        Ok(p) => p,
        Err(_) => {
            for c in [&first.conn, &second.conn] {
                refuse(&state, c, Refusal::Busy);
            }
            return;
        }
    };
    let channels = [pair.first, pair.second];
    let mut ends = [first, second];
    let mut told = true;
    for (i, w) in ends.iter_mut().enumerate() {
        let grant = Grant {
            channel: channels[i],
            reflexive: at[i],
            peer: true,
        };
        let mut answer = vec![PAIRED];
        answer.extend_from_slice(&grant.encode());
        told &= w.hello_reply.write_all(&answer).await.is_ok();
    }
    if !told {
        state.switch.with(|s| channels.map(|c| s.release(c)));
        for w in &ends {
            refuse(&state, &w.conn, Refusal::PeerLost);
        }
        return;
    }
    metrics.sessions_total.fetch_add(1, Relaxed);
    let _active = Gauge::up(&metrics, |m| &m.sessions_active);
    (state.log)(json!({
        "event": "session_open",
        "session": id,
        "pairing_wait_s": waited.as_secs_f64(),
        "path": "switch",
    }));
    let start = Instant::now();
    let mut tick = tokio::time::interval(SWEEP);
    let (code, reason) = loop {
        tokio::select! {
            e = ends[0].conn.closed() => break close_of(&e),
            e = ends[1].conn.closed() => break close_of(&e),
            _ = tick.tick() => {
                for i in 0..2 {
                    let now_at = ends[i].conn.remote_address();
                    if now_at == at[i] {
                        continue;
                    }
                    // The control connection migrated (quinn validated the new path):
                    // the allocation follows it, and the client hears its new address.
                    at[i] = now_at;
                    if state.switch.with(|s| s.rebind(channels[i], now_at)) {
                        let grant = Grant { channel: channels[i], reflexive: now_at, peer: true };
                        let _ = ends[i].hello_reply.write_all(&grant.encode()).await;
                        (state.log)(json!({"event": "rebound", "session": id}));
                    }
                }
            }
        }
    };
    let sent = state.switch.with(|s| {
        let sent = channels.map(|c| s.sent(c));
        for c in channels {
            s.release(c);
        }
        sent
    });
    // The end's close reaches the other end from the relay (the switch carries no
    // closes of the control connections).
    for w in &ends {
        w.conn.close(code.into(), reason.as_bytes());
    }
    metrics
        .bytes_relayed
        .fetch_add(sent[0].saturating_add(sent[1]), Relaxed);
    (state.log)(json!({
        "event": "session_closed",
        "session": id,
        "seconds": start.elapsed().as_secs_f64(),
        "bytes_listener_to_connector": sent[0],
        "bytes_connector_to_listener": sent[1],
        "close_code": code,
        "reason": reason,
    }));
}

/// The code and reason a control connection ended with ([`Refusal::PeerLost`] when it
/// was not an application close: a timeout, a reset).
fn close_of(e: &quinn::ConnectionError) -> (u32, String) {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => (
            u32::try_from(c.error_code.into_inner()).unwrap_or(u32::MAX),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        _ => (
            Refusal::PeerLost.code(),
            Refusal::PeerLost.label().to_string(),
        ),
    }
}

fn session_id() -> String {
    let mut b = [0u8; 8];
    // A failing OS RNG only makes log ids collide; it is not a security property.
    let _ = getrandom::getrandom(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
