//! One audit record: its fields (schema version 1), and its line in the log with the MAC
//! that chains it to the record before.
//!
//! A line is a JSON object whose last member is `"mac"`:
//!
//! ```text
//! {"v":1,"seq":7,"ts":"2026-11-27T21:15:18.123Z",...,"prev":"<64 hex>","mac":"<64 hex>"}
//! ```
//!
//! The MAC is HMAC-SHA256, under the endpoint's audit key, of the line's bytes up to the
//! `,"mac":` member with the closing `}` put back (the *body*). The body holds `seq` and
//! `prev` (the previous record's MAC), so the MAC covers the record and its place in the
//! chain; it is computed over the exact bytes written, never over a re-serialization.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The schema version written in every record (`v`).
pub const SCHEMA_VERSION: u32 = 1;
/// Longest line accepted when reading a log (a record is a few hundred bytes; file
/// names are limited by the transfer protocol).
pub const MAX_LINE: usize = 64 * 1024;
/// Longest free text kept in a record (`reason`, `peer_name`); longer text is cut at
/// a character boundary and marked with `…`.
pub const MAX_TEXT: usize = 1024;

/// `text`, cut to at most [`MAX_TEXT`] bytes at a character boundary.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_string();
    }
    let mut end = MAX_TEXT - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `prev` of the first record of a log.
pub const GENESIS_PREV: [u8; 32] = [0u8; 32];

/// What a record is about (`event`).
pub mod event {
    /// The first record of a new log.
    pub const LOG_CREATED: &str = "log_created";
    /// A peer authenticated; a session began.
    pub const SESSION_OPENED: &str = "session_opened";
    /// The handshake failed: wrong key, wrong code, unknown sender.
    pub const AUTH_FAILED: &str = "auth_failed";
    /// The receiver accepted the offer.
    pub const OFFER_ACCEPTED: &str = "offer_accepted";
    /// The receiver refused the offer.
    pub const OFFER_REFUSED: &str = "offer_refused";
    /// A file continues from an interrupted transfer.
    pub const RESUME: &str = "resume";
    /// A file was sent (sender) or received, verified and given its name (receiver).
    pub const FILE_COMPLETED: &str = "file_completed";
    /// The receipt: sent by the receiver, checked by the sender.
    pub const RECEIPT: &str = "receipt";
    /// The transfer failed.
    pub const TRANSFER_FAILED: &str = "transfer_failed";
    /// `conduit audit repair` cut a torn record off the end of the log.
    pub const LOG_REPAIRED: &str = "log_repaired";
    /// Records of parties that never authenticated were dropped by the rate limit
    /// (`count` of them, the first at the time in `reason`); see [`crate::audit::limit`].
    pub const UNAUTHENTICATED_SUPPRESSED: &str = "unauthenticated_suppressed";
    /// The receiver removed a leftover partial file older than its maximum age.
    pub const PARTIAL_REMOVED: &str = "partial_removed";
    /// The agent queued a file for a recipient (`reason`: the item id).
    pub const ITEM_QUEUED: &str = "item_queued";
    /// The agent has a recipient's receipt for an item (`blake3`).
    pub const ITEM_DELIVERED: &str = "item_delivered";
    /// The agent gave an item up (`reason`: the item id and why).
    pub const ITEM_FAILED: &str = "item_failed";
    /// An item was cancelled by the operator.
    pub const ITEM_CANCELLED: &str = "item_cancelled";
    /// The agent ran an inbox's `on_receive` program (`reason`: how it ended and how long
    /// it ran).
    pub const HOOK_RAN: &str = "hook_ran";
    /// The web console: a login, a refused login, a logout, an action (`reason`).
    pub const CONSOLE: &str = "console";
}

/// The fields of a record. `None` fields are left out of the line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub v: u32,
    /// Position in the chain, from 0, across rotated files.
    pub seq: u64,
    /// UTC time, RFC 3339 with milliseconds.
    pub ts: String,
    /// What happened (see [`event`]).
    pub event: String,
    /// This endpoint's fingerprint.
    pub local: String,
    /// Random id of one session (one transfer) at this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// `send` or `receive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The peer's fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The peer's name in the address book.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_name: Option<String>,
    /// How the peer authenticated: `known_key`, `code` or (FIPS mode) `fips_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// The path the connection took: `direct` or `relayed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_path: Option<String>,
    /// The transfer id (hex), shared by both endpoints' records of one transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
    /// The file's relative path (names mode `plain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Keyed hash of the relative path (names mode `hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hash: Option<String>,
    /// The file's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The file's BLAKE3 (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// The file's SHA-256 (hex), in place of `blake3` for a FIPS session's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Number of files of the offer or receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Bytes of the offer or receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Resume: the byte the file continues from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_byte: Option<u64>,
    /// The hash over the receipt's file hashes, in order, with their algorithm: hex of
    /// BLAKE3, or `sha256:` and hex of SHA-256 (a FIPS session's receipt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
    /// Receipt: the peer's audit chain head (hex) exchanged with the receipt (the
    /// sender's head at its offer, or the receiver's head at its receipt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_head: Option<String>,
    /// Why: a refusal, an authentication failure, a transfer failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many records a summary stands for (`unauthenticated_suppressed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// MAC of the previous record (hex; zeros for the first).
    pub prev: String,
}

/// The key that MACs the chain, derived from the endpoint's identity secret.
pub struct ChainKey(Zeroizing<[u8; 32]>);

impl ChainKey {
    /// Derives the chain key (HKDF-SHA256 of the identity secret, own label; in the
    /// cryptographic module, as the MAC is).
    pub fn derive(identity_secret: &[u8; 32], label: &[u8]) -> Self {
        use aws_lc_rs::hkdf;
        struct Len32;
        impl hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let mut key = Zeroizing::new([0u8; 32]);
        // No salt: RFC 5869's default, a hash-length string of zeros (HMAC pads an empty
        // key the same way).
        let filled = hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
            .extract(identity_secret)
            .expand(&[label], Len32)
            .and_then(|okm| okm.fill(key.as_mut()));
        // 32 bytes is always a valid HKDF-SHA256 output length.
        if filled.is_err() {
            key.fill(0);
        }
        Self(key)
    }

    fn mac(&self) -> aws_lc_rs::hmac::Key {
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, self.0.as_ref())
    }

    /// HMAC-SHA256 of `body`.
    pub fn tag(&self, body: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(aws_lc_rs::hmac::sign(&self.mac(), body).as_ref());
        out
    }

    /// Checks `tag` over `body` in constant time.
    pub fn check(&self, body: &[u8], tag: &[u8; 32]) -> bool {
        aws_lc_rs::hmac::verify(&self.mac(), body, tag).is_ok()
    }

    /// A keyed hash of a file name, for `--audit-names hash`.
    pub fn name_hash(&self, name: &str) -> String {
        hex(&self.tag(name.as_bytes()))
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

const MAC_PREFIX: &str = ",\"mac\":\"";

/// Encodes `record` (whose `prev` is set) as one line, without the newline, and returns it
/// with its MAC.
pub fn encode(record: &Record, key: &ChainKey) -> Result<(String, [u8; 32]), serde_json::Error> {
    let body = serde_json::to_string(record)?;
    let tag = key.tag(body.as_bytes());
    let open = body.strip_suffix('}').unwrap_or(&body);
    Ok((format!("{open}{MAC_PREFIX}{}\"}}", hex(&tag)), tag))
}

/// Why a line is not a well-formed record (before any MAC check).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// No `"mac"` member at the end.
    #[error("not a record: no MAC at the end of the line")]
    NoMac,
    /// The body is not a schema-1 record.
    #[error("not a record: {0}")]
    Malformed(String),
    /// Another schema version.
    #[error("unsupported schema version {0}")]
    Version(u32),
}

/// A line split into its record, its body bytes and its MAC.
#[derive(Debug)]
pub struct Parsed {
    /// The record.
    pub record: Record,
    /// The bytes the MAC covers.
    pub body: String,
    /// The MAC.
    pub mac: [u8; 32],
    /// `prev`, decoded.
    pub prev: [u8; 32],
}

/// Splits and parses one line (without its newline). The MAC is not checked here.
pub fn parse(line: &str) -> Result<Parsed, LineError> {
    let at = line.rfind(MAC_PREFIX).ok_or(LineError::NoMac)?;
    let tail = &line[at + MAC_PREFIX.len()..];
    let mac_hex = tail.strip_suffix("\"}").ok_or(LineError::NoMac)?;
    let mac = unhex(mac_hex).ok_or(LineError::NoMac)?;
    let body = format!("{}}}", &line[..at]);
    let record: Record =
        serde_json::from_str(&body).map_err(|e| LineError::Malformed(e.to_string()))?;
    if record.v != SCHEMA_VERSION {
        return Err(LineError::Version(record.v));
    }
    let prev = unhex(&record.prev).ok_or_else(|| LineError::Malformed("bad prev".into()))?;
    Ok(Parsed {
        record,
        body,
        mac,
        prev,
    })
}

impl Record {
    /// Sets the file's hash: `blake3` or `sha256`, by its algorithm.
    pub fn set_file_hash(&mut self, h: &crate::crypto::file_hash::FileHash) {
        match h.alg() {
            crate::crypto::file_hash::HashAlg::Blake3 => self.blake3 = Some(h.to_hex()),
            crate::crypto::file_hash::HashAlg::Sha256 => self.sha256 = Some(h.to_hex()),
        }
    }
}

/// Lower-case hex (one allocation, no formatting machinery: every record of the log,
/// and every file a receiver creates, needs some).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// 64 lower-case hex digits to 32 bytes.
pub fn unhex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    // Lower case only: the MAC's text is outside the bytes it covers, so exactly one
    // spelling of it may verify.
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Now, UTC, RFC 3339 with milliseconds (`2026-11-27T21:15:18.123Z`).
pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_the_lower_case_hex_of_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), expected);
        assert_eq!(hex(&[]), "");
        assert_eq!(unhex(&hex(&[0xa5; 32])), Some([0xa5; 32]));
    }

    fn sample() -> Record {
        Record {
            v: SCHEMA_VERSION,
            seq: 3,
            ts: now(),
            event: event::FILE_COMPLETED.into(),
            local: "abcd".into(),
            path: Some("a \"quoted\" ,\"mac\":\" name".into()),
            size: Some(5),
            prev: hex(&[9u8; 32]),
            ..Record::default()
        }
    }

    #[test]
    fn line_round_trips_and_mac_covers_body() {
        let key = ChainKey::derive(&[1u8; 32], b"test");
        let (line, mac) = encode(&sample(), &key).unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok());
        let p = parse(&line).unwrap();
        assert_eq!(p.record, sample_with_ts(&p.record.ts));
        assert_eq!(p.mac, mac);
        assert_eq!(p.prev, [9u8; 32]);
        assert!(key.check(p.body.as_bytes(), &p.mac));
        let other = ChainKey::derive(&[2u8; 32], b"test");
        assert!(!other.check(p.body.as_bytes(), &p.mac));
        // One character changed in the body.
        let edited = line.replacen("\"size\":5", "\"size\":6", 1);
        let q = parse(&edited).unwrap();
        assert!(!key.check(q.body.as_bytes(), &q.mac));
    }

    fn sample_with_ts(ts: &str) -> Record {
        Record {
            ts: ts.into(),
            ..sample()
        }
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for line in [
            "",
            "{}",
            "{\"mac\":\"00\"}",
            &format!("{{\"v\":1{MAC_PREFIX}{}\"}}", "0".repeat(64)),
            &format!(
                "{{\"v\":2,\"seq\":0,\"ts\":\"\",\"event\":\"x\",\"local\":\"\",\"prev\":\"{}\"{MAC_PREFIX}{}\"}}",
                "0".repeat(64),
                "0".repeat(64)
            ),
            "\u{1F600}\",\"mac\":\"zz\"}",
        ] {
            assert!(parse(line).is_err(), "{line}");
        }
    }

    #[test]
    fn a_mac_spelled_in_upper_case_does_not_parse() {
        let key = ChainKey::derive(&[1u8; 32], b"test");
        let (line, _) = encode(&sample(), &key).unwrap();
        let at = line.rfind(MAC_PREFIX).unwrap() + MAC_PREFIX.len();
        let upper = format!("{}{}", &line[..at], line[at..].to_uppercase());
        assert!(parse(&upper).is_err());
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        for long in ["x".repeat(5000), "é".repeat(3000), "名".repeat(2000)] {
            let b = bounded(&long);
            assert!(b.len() <= MAX_TEXT && b.ends_with('…'), "{}", b.len());
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = now();
        assert!(
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).is_ok()
        );
        assert!(t.ends_with('Z') && t.len() == 24, "{t}");
    }
}
