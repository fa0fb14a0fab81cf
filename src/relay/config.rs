//! The relay's limits: documented defaults, overridable by a TOML file (`--config`) and
//! then by command-line flags. The bound on the relay's memory follows from them (see
//! [`Limits::memory_bound`] and docs/PROTOCOL.md, "Relay limits").

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// Default: sessions (paired clients) at once.
pub const MAX_SESSIONS: usize = 256;
/// Default: connections at once (waiting, handshaking and spliced).
pub const MAX_CONNECTIONS: usize = 2048;
/// Default: clients waiting for a peer per source IP address.
pub const MAX_WAITING_PER_IP: usize = 32;
/// Default: connections from one source IP address not (yet) in a session: handshaking,
/// before their Hello, or waiting for a peer.
pub const MAX_UNPAIRED_PER_IP: usize = 64;
/// Default: connections from one source (IPv4 address, IPv6 /64) at once, in sessions
/// or not.
pub const MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default: sessions at once that have one end or both at one source (IPv4 address,
/// IPv6 /64): a session counts once against each source among its two ends, so one
/// source connecting to itself cannot take every session slot.
pub const MAX_SESSIONS_PER_SOURCE: usize = 8;
/// The longest a duration limit may be (one day): longer windows and timeouts serve no
/// one, and a bound keeps every deadline the relay computes representable.
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);
/// Default: strikes a source may collect within [`STRIKE_WINDOW`] before it is refused
/// until the window ends (see [`crate::relay::ratelimit`]).
pub const MAX_STRIKES: u32 = crate::relay::ratelimit::MAX_STRIKES;
/// Default: the strike window.
pub const STRIKE_WINDOW: Duration = crate::relay::ratelimit::WINDOW;
/// Default: clients waiting on one rendezvous id (a daemon's `--concurrent` slots).
pub const MAX_WAITING_PER_RENDEZVOUS: usize = 16;
/// Default: how long a client waits for its peer.
pub const PAIRING_TIMEOUT: Duration = Duration::from_secs(300);
/// Default: a connection silent for this long is closed (clients send keep-alives).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default: time from the first packet to a complete Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Default: on SIGTERM, how long running sessions may take to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default: per-stream receive window towards each client.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// Default: per-connection receive window, and the send buffer per connection.
pub const CONNECTION_WINDOW: u32 = 4 << 20;
/// Bytes the relay reads from one stream before it has written them on (one per stream).
pub const COPY_CHUNK: usize = 64 << 10;
/// Concurrent unidirectional streams per client connection (as the endpoints allow).
pub const MAX_STREAMS: u32 = crate::transport::MAX_UNI_STREAMS;
/// Bidirectional streams per client connection once paired (the Hello stream and the
/// end-to-end control stream, with room).
pub const MAX_BIDI_STREAMS: u32 = 4;
/// Before pairing: the connection's receive window (all streams together). The Hello
/// (at most 170 bytes with its length) and the listener's proof (64) fit many times over; nothing else
/// may be sent before pairing.
pub const UNPAIRED_WINDOW: u32 = 8 << 10;
/// Before pairing: the send buffer towards the client (the challenge and the answer).
pub const UNPAIRED_SEND_WINDOW: u32 = 8 << 10;
/// Measured cost of one idle unpaired connection in the relay process (QUIC and TLS
/// state, its task, the stream of its Hello), rounded up: see docs/PROTOCOL.md, "Relay
/// limits and memory", and tests/relay/relay_hostile.rs.
pub const CONNECTION_OVERHEAD: u64 = 48 << 10;

/// The relay's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sessions spliced at once.
    pub max_sessions: usize,
    /// Connections at once.
    pub max_connections: usize,
    /// Waiting clients per source IP.
    pub max_waiting_per_ip: usize,
    /// Waiting clients per rendezvous id.
    pub max_waiting_per_rendezvous: usize,
    /// Connections per source IP not in a session.
    pub max_unpaired_per_ip: usize,
    /// Connections per source IP, in sessions or not.
    pub max_connections_per_ip: usize,
    /// Sessions per source (a session counts against each of its ends' sources).
    pub max_sessions_per_source: usize,
    /// Strikes per source within the strike window.
    pub max_strikes: u32,
    /// The strike window.
    pub strike_window: Duration,
    /// Pairing timeout.
    pub pairing_timeout: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Hello timeout.
    pub hello_timeout: Duration,
    /// Drain deadline on SIGTERM.
    pub drain_timeout: Duration,
    /// Per-stream receive window (bytes).
    pub stream_window: u32,
    /// Per-connection receive window and send buffer (bytes).
    pub connection_window: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: MAX_SESSIONS,
            max_connections: MAX_CONNECTIONS,
            max_waiting_per_ip: MAX_WAITING_PER_IP,
            max_waiting_per_rendezvous: MAX_WAITING_PER_RENDEZVOUS,
            max_unpaired_per_ip: MAX_UNPAIRED_PER_IP,
            max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
            max_sessions_per_source: MAX_SESSIONS_PER_SOURCE,
            max_strikes: MAX_STRIKES,
            strike_window: STRIKE_WINDOW,
            pairing_timeout: PAIRING_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            hello_timeout: HELLO_TIMEOUT,
            drain_timeout: DRAIN_TIMEOUT,
            stream_window: STREAM_WINDOW,
            connection_window: CONNECTION_WINDOW,
        }
    }
}

impl Limits {
    /// Upper bound of the bytes of payload the relay can hold for one session: for each
    /// of its two connections, the receive window (unread data), the send buffer
    /// (written, unacknowledged) and one copy chunk per stream in hand.
    pub fn session_memory_bound(&self) -> u64 {
        2 * (u64::from(self.connection_window) * 2 + u64::from(MAX_STREAMS) * COPY_CHUNK as u64)
    }

    /// Upper bound of the bytes one connection not in a session costs: its windows
    /// before pairing and [`CONNECTION_OVERHEAD`].
    pub fn unpaired_memory_bound(&self) -> u64 {
        u64::from(UNPAIRED_WINDOW) + u64::from(UNPAIRED_SEND_WINDOW) + CONNECTION_OVERHEAD
    }

    /// Upper bound of the bytes held for clients at once: the payload of every session,
    /// and every other connection the relay admits waiting unpaired.
    pub fn memory_bound(&self) -> u64 {
        let in_sessions = 2 * self.max_sessions;
        let unpaired = self.max_connections.saturating_sub(in_sessions) as u64;
        self.session_memory_bound() * self.max_sessions as u64
            + unpaired * self.unpaired_memory_bound()
    }

    /// The QUIC transport configuration of the relay's client connections: the small
    /// limits of a connection not yet paired (a connection can only send its Hello and
    /// proof); [`Limits::open_up`] raises them when the connection is paired.
    pub fn transport_config(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(self.stream_window.into());
        t.receive_window(UNPAIRED_WINDOW.into());
        t.send_window(u64::from(UNPAIRED_SEND_WINDOW));
        t.max_concurrent_uni_streams(0u32.into());
        // The Hello stream only.
        t.max_concurrent_bidi_streams(1u32.into());
        // The relay carries streams only.
        t.datagram_receive_buffer_size(None);
        t.datagram_send_buffer_size(0);
        t.max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok());
        t
    }

    /// Raises a paired connection's limits to a session's: the receive window, the send
    /// buffer and the streams the endpoints use.
    pub fn open_up(&self, conn: &quinn::Connection) {
        conn.set_receive_window(self.connection_window.into());
        conn.set_send_window(u64::from(self.connection_window));
        conn.set_max_concurrent_uni_streams(MAX_STREAMS.into());
        conn.set_max_concurrent_bi_streams(MAX_BIDI_STREAMS.into());
    }

    /// Applies a TOML file's `[limits]` over these values.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        FileLimits::load(path)?.apply(self);
        self.check()
    }

    /// Each limit by its file key, with its value and whether `file` sets it.
    pub fn describe(&self, file: &FileLimits) -> Vec<(&'static str, String, bool)> {
        let s = |d: Duration| d.as_secs().to_string();
        vec![
            (
                "max_sessions",
                self.max_sessions.to_string(),
                file.max_sessions.is_some(),
            ),
            (
                "max_connections",
                self.max_connections.to_string(),
                file.max_connections.is_some(),
            ),
            (
                "max_waiting_per_ip",
                self.max_waiting_per_ip.to_string(),
                file.max_waiting_per_ip.is_some(),
            ),
            (
                "max_waiting_per_rendezvous",
                self.max_waiting_per_rendezvous.to_string(),
                file.max_waiting_per_rendezvous.is_some(),
            ),
            (
                "max_unpaired_per_ip",
                self.max_unpaired_per_ip.to_string(),
                file.max_unpaired_per_ip.is_some(),
            ),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip.to_string(),
                file.max_connections_per_ip.is_some(),
            ),
            (
                "max_sessions_per_source",
                self.max_sessions_per_source.to_string(),
                file.max_sessions_per_source.is_some(),
            ),
            (
                "max_strikes",
                self.max_strikes.to_string(),
                file.max_strikes.is_some(),
            ),
            (
                "strike_window_secs",
                s(self.strike_window),
                file.strike_window_secs.is_some(),
            ),
            (
                "pairing_timeout_secs",
                s(self.pairing_timeout),
                file.pairing_timeout_secs.is_some(),
            ),
            (
                "idle_timeout_secs",
                s(self.idle_timeout),
                file.idle_timeout_secs.is_some(),
            ),
            (
                "hello_timeout_secs",
                s(self.hello_timeout),
                file.hello_timeout_secs.is_some(),
            ),
            (
                "drain_timeout_secs",
                s(self.drain_timeout),
                file.drain_timeout_secs.is_some(),
            ),
            (
                "stream_window",
                self.stream_window.to_string(),
                file.stream_window.is_some(),
            ),
            (
                "connection_window",
                self.connection_window.to_string(),
                file.connection_window.is_some(),
            ),
        ]
    }
}

impl FileLimits {
    /// The `[limits]` table of a relay configuration file (`conduit relay --config`).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let file: File = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(file.limits)
    }

    /// Sets the limits this table names over `limits`.
    pub fn apply(&self, limits: &mut Limits) {
        let l = self;
        let this = limits;
        let secs = Duration::from_secs;
        set(&mut this.max_sessions, l.max_sessions);
        set(&mut this.max_connections, l.max_connections);
        set(&mut this.max_waiting_per_ip, l.max_waiting_per_ip);
        set(
            &mut this.max_waiting_per_rendezvous,
            l.max_waiting_per_rendezvous,
        );
        set(&mut this.max_unpaired_per_ip, l.max_unpaired_per_ip);
        set(&mut this.max_connections_per_ip, l.max_connections_per_ip);
        set(&mut this.max_sessions_per_source, l.max_sessions_per_source);
        set(&mut this.max_strikes, l.max_strikes);
        set(&mut this.strike_window, l.strike_window_secs.map(secs));
        set(&mut this.pairing_timeout, l.pairing_timeout_secs.map(secs));
        set(&mut this.idle_timeout, l.idle_timeout_secs.map(secs));
        set(&mut this.hello_timeout, l.hello_timeout_secs.map(secs));
        set(&mut this.drain_timeout, l.drain_timeout_secs.map(secs));
        set(&mut this.stream_window, l.stream_window);
        set(&mut this.connection_window, l.connection_window);
    }
}

impl Limits {
    /// Rejects values that cannot work.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |what| Err(ConfigError::Value(what));
        if self.max_sessions == 0 || self.max_connections < 2 {
            return bad("max_sessions must be at least 1 and max_connections at least 2");
        }
        if self.max_waiting_per_ip == 0
            || self.max_waiting_per_rendezvous == 0
            || self.max_unpaired_per_ip == 0
            || self.max_connections_per_ip == 0
            || self.max_sessions_per_source == 0
        {
            return bad("waiting and per-address limits must be at least 1");
        }
        if self.max_strikes == 0 || self.strike_window.is_zero() {
            return bad("max_strikes and strike_window_secs must be at least 1");
        }
        if self.idle_timeout < Duration::from_secs(1)
            || self.idle_timeout > Duration::from_secs(3600)
        {
            return bad("idle_timeout_secs must be between 1 and 3600");
        }
        if self.hello_timeout.is_zero() || self.pairing_timeout.is_zero() {
            return bad("timeouts must be at least 1 second");
        }
        let durations = [
            self.strike_window,
            self.pairing_timeout,
            self.hello_timeout,
            self.drain_timeout,
        ];
        if durations.iter().any(|d| *d > MAX_DURATION) {
            return bad(
                "strike_window_secs, pairing_timeout_secs, hello_timeout_secs and \
                 drain_timeout_secs must be at most 86400 (one day)",
            );
        }
        if self.stream_window < (64 << 10) || self.connection_window < self.stream_window {
            return bad(
                "stream_window must be at least 65536 and connection_window at least stream_window",
            );
        }
        Ok(())
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    limits: FileLimits,
}

/// A `[limits]` table: the limits it names, each optional.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Sessions spliced at once.
    pub max_sessions: Option<usize>,
    /// Connections at once.
    pub max_connections: Option<usize>,
    /// Waiting clients per source IP.
    pub max_waiting_per_ip: Option<usize>,
    /// Waiting clients per rendezvous id.
    pub max_waiting_per_rendezvous: Option<usize>,
    /// Connections per source IP not in a session.
    pub max_unpaired_per_ip: Option<usize>,
    /// Connections per source IP, in sessions or not.
    pub max_connections_per_ip: Option<usize>,
    /// Sessions per source (each end's source).
    pub max_sessions_per_source: Option<usize>,
    /// Strikes per source within the strike window.
    pub max_strikes: Option<u32>,
    /// The strike window, seconds.
    pub strike_window_secs: Option<u64>,
    /// Pairing timeout, seconds.
    pub pairing_timeout_secs: Option<u64>,
    /// Idle timeout, seconds.
    pub idle_timeout_secs: Option<u64>,
    /// Hello timeout, seconds.
    pub hello_timeout_secs: Option<u64>,
    /// Drain deadline, seconds.
    pub drain_timeout_secs: Option<u64>,
    /// Per-stream receive window, bytes.
    pub stream_window: Option<u32>,
    /// Per-connection receive window, bytes.
    pub connection_window: Option<u32>,
}

/// Errors of the relay configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("relay config {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key (the message names the line).
    #[error("relay config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("relay limits: {0}")]
    Value(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounded() {
        let l = Limits::default();
        l.check().unwrap();
        // Two 4 MiB windows and 64 copy chunks per connection, two connections.
        assert_eq!(l.session_memory_bound(), 2 * (8 << 20) + 2 * (4 << 20));
        // 256 sessions, and the other 2048 - 512 connections waiting unpaired.
        assert_eq!(
            l.memory_bound(),
            l.session_memory_bound() * 256 + 1536 * (16 << 10) + 1536 * CONNECTION_OVERHEAD
        );
    }

    #[test]
    fn file_overrides_and_unknown_keys_are_errors_with_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(
            &p,
            "[limits]\nmax_sessions = 8\npairing_timeout_secs = 20\n",
        )
        .unwrap();
        let mut l = Limits::default();
        l.apply_file(&p).unwrap();
        assert_eq!(l.max_sessions, 8);
        assert_eq!(l.pairing_timeout, Duration::from_secs(20));
        assert_eq!(l.idle_timeout, IDLE_TIMEOUT);
        std::fs::write(&p, "[limits]\nmax_sessions = 8\nmax_sesions = 9\n").unwrap();
        let err = Limits::default().apply_file(&p).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("max_sesions"), "{err}");
        std::fs::write(&p, "[limits]\nmax_sessions = 0\n").unwrap();
        assert!(matches!(
            Limits::default().apply_file(&p),
            Err(ConfigError::Value(_))
        ));
    }

    #[test]
    fn durations_past_a_day_are_refused_with_a_clear_error() {
        // `--strike-window 18446744073709551615` once panicked the relay (an expiry past
        // what an Instant holds); every duration limit is capped.
        let huge = Duration::from_secs(u64::MAX);
        let cases: [fn(&mut Limits, Duration); 4] = [
            |l, d| l.strike_window = d,
            |l, d| l.pairing_timeout = d,
            |l, d| l.hello_timeout = d,
            |l, d| l.drain_timeout = d,
        ];
        for set in cases {
            for d in [huge, MAX_DURATION + Duration::from_secs(1)] {
                let mut l = Limits::default();
                set(&mut l, d);
                let err = l.check().unwrap_err().to_string();
                assert!(err.contains("at most 86400"), "{err}");
            }
            let mut l = Limits::default();
            set(&mut l, MAX_DURATION);
            l.check().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(&p, "[limits]\nstrike_window_secs = 86401\n").unwrap();
        assert!(matches!(
            Limits::default().apply_file(&p),
            Err(ConfigError::Value(_))
        ));
    }

    #[test]
    fn sessions_per_source_is_a_limit_of_its_own() {
        let l = Limits::default();
        assert_eq!(l.max_sessions_per_source, MAX_SESSIONS_PER_SOURCE);
        let mut bad = l;
        bad.max_sessions_per_source = 0;
        assert!(bad.check().is_err());
        let file = FileLimits {
            max_sessions_per_source: Some(3),
            ..FileLimits::default()
        };
        let mut set = l;
        file.apply(&mut set);
        assert_eq!(set.max_sessions_per_source, 3);
        let row = set
            .describe(&file)
            .into_iter()
            .find(|(k, ..)| *k == "max_sessions_per_source")
            .unwrap();
        assert_eq!(row, ("max_sessions_per_source", "3".to_string(), true));
    }
}
