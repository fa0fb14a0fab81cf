//! Sizes and the errors of the layers below (QUIC, IO) as words for people: what a close code
//! means, why a stream ended. A QUIC close carries the peer's reason bytes; they are never
//! shown (a peer chooses them), only what the code stands for here.

use quinn::{ConnectionError, ReadError, WriteError};

use crate::transfer::error::{CLOSE_BUSY, CLOSE_CANCELLED, CLOSE_DONE, CLOSE_ERROR, CLOSE_TIMEOUT};

/// A size for people in binary units with one decimal: "0 B", "1 byte", "512 B",
/// "1.5 KiB", "12.0 MiB", "1.2 GiB", "3.0 TiB".
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    match bytes {
        1 => return "1 byte".to_string(),
        0..1024 => return format!("{bytes} B"),
        _ => {}
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Rounded as shown: 1023.96 KiB is "1.0 MiB", not "1024.0 KiB".
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Why a connection ended, as a sentence.
pub fn connection(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(c) => closed_by_peer(c.error_code.into_inner()),
        ConnectionError::ConnectionClosed(c) => {
            format!("the peer's QUIC stack closed the connection ({})", c.error_code)
        }
        ConnectionError::Reset => {
            "the peer reset the connection (it restarted, or no longer knows it)".to_string()
        }
        ConnectionError::TimedOut => {
            "timed out: no packet from the peer within the idle timeout (it went away, or the network, a firewall on the UDP port, drops the packets)".to_string()
        }
        ConnectionError::LocallyClosed => "the connection was closed on this side".to_string(),
        ConnectionError::VersionMismatch => {
            "the peer speaks no QUIC version this build speaks".to_string()
        }
        ConnectionError::TransportError(t) => format!("QUIC protocol error ({t})"),
        ConnectionError::CidsExhausted => "out of QUIC connection ids".to_string(),
    }
}

/// What a QUIC application close code from the peer (or the relay) means.
pub fn closed_by_peer(code: u64) -> String {
    if let Some(refusal) = crate::relay::hello::Refusal::from_code(code) {
        return format!("closed by the relay: {refusal}");
    }
    let code = u32::try_from(code).unwrap_or(u32::MAX);
    match code {
        CLOSE_DONE => "the peer closed the connection".to_string(),
        CLOSE_ERROR => {
            "the peer ended the transfer after an error on its side (its output says which)"
                .to_string()
        }
        CLOSE_CANCELLED => {
            "the peer stopped the transfer (Ctrl-C or SIGTERM there); the same commands resume it"
                .to_string()
        }
        CLOSE_TIMEOUT => "the peer gave up waiting for this side".to_string(),
        CLOSE_BUSY => "the receiver is busy with other transfers; try again later".to_string(),
        other => format!("the peer closed the connection (code {other})"),
    }
}

/// Why reading a stream failed.
pub fn read(e: &ReadError) -> String {
    match e {
        ReadError::Reset(_) => "the peer abandoned the stream".to_string(),
        ReadError::ConnectionLost(c) => connection(c),
        other => other.to_string(),
    }
}

/// Why writing a stream failed.
pub fn write(e: &WriteError) -> String {
    match e {
        WriteError::Stopped(_) => "the peer stopped reading the stream".to_string(),
        WriteError::ConnectionLost(c) => connection(c),
        other => other.to_string(),
    }
}

/// An IO error: a QUIC error inside it as the sentences above, a stream that ended
/// early ("early eof") as that, others as the system says them.
pub fn io(e: &std::io::Error) -> String {
    if let Some(inner) = e.get_ref() {
        if let Some(r) = inner.downcast_ref::<ReadError>() {
            return read(r);
        }
        if let Some(w) = inner.downcast_ref::<WriteError>() {
            return write(w);
        }
        if let Some(c) = inner.downcast_ref::<ConnectionError>() {
            return connection(c);
        }
    }
    // tokio's `read_exact` on a QUIC stream that ended (a local file read short says
    // "failed to fill whole buffer", and keeps it).
    if e.kind() == std::io::ErrorKind::UnexpectedEof && e.to_string() == "early eof" {
        return "the stream ended early (the peer closed it, or its process ended)".to_string();
    }
    e.to_string()
}

/// The sentence for `err` if it is one of the foreign errors above (QUIC, IO), else
/// `None`: the binary shows these instead of their own text.
pub fn of(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(c) = err.downcast_ref::<ConnectionError>() {
        return Some(connection(c));
    }
    if let Some(r) = err.downcast_ref::<ReadError>() {
        return Some(read(r));
    }
    if let Some(w) = err.downcast_ref::<WriteError>() {
        return Some(write(w));
    }
    err.downcast_ref::<std::io::Error>().map(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_are_sentences_without_the_peers_reason() {
        let closed = |code: u32, reason: &'static [u8]| {
            ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(code),
                reason: bytes::Bytes::from_static(reason),
            })
        };
        let cancelled = connection(&closed(CLOSE_CANCELLED, b"\x1b[31mcancelled"));
        assert!(cancelled.contains("stopped the transfer"), "{cancelled}");
        assert!(!cancelled.contains('\u{1b}') && !cancelled.contains("code"));
        let relay = connection(&closed(
            crate::relay::hello::Refusal::NoListener.code(),
            b"",
        ));
        assert!(relay.contains("no peer is waiting"), "{relay}");
        assert!(connection(&closed(77, b"x")).contains("code 77"));
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "early eof");
        assert!(!io(&eof).contains("early eof"));
        // A local file read short is not the peer's doing.
        let short = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "failed to fill whole buffer",
        );
        assert_eq!(io(&short), "failed to fill whole buffer");
        let lost = std::io::Error::from(ReadError::ConnectionLost(ConnectionError::TimedOut));
        assert!(io(&lost).contains("idle timeout"), "{}", io(&lost));
    }
}
