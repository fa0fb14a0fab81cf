//! Relay access tokens. The tokens file holds only SHA-256 hashes of the tokens, one per
//! line as 64 hex digits (`#` starts a comment); make one with
//! `printf %s "$TOKEN" | sha256sum`. A token is checked against every hash in constant
//! time, with no early exit.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Largest tokens file read.
pub const MAX_TOKENS_FILE: u64 = 1 << 20;

/// Errors loading a tokens file.
#[derive(Debug, Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("tokens file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a SHA-256 hash in hex.
    #[error("tokens file {path}, line {line}: expected 64 hex digits (a SHA-256 of the token)")]
    Line {
        /// The file.
        path: String,
        /// The 1-based line number.
        line: usize,
    },
    /// The file is larger than [`MAX_TOKENS_FILE`] or holds no hash.
    #[error("tokens file {path}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// The accepted token hashes.
#[derive(Clone)]
pub struct Tokens(Vec<[u8; 32]>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} hashes)", self.0.len())
    }
}

impl Tokens {
    /// Loads a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let name = path.display().to_string();
        let io = |source| TokensError::Io {
            path: name.clone(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_TOKENS_FILE {
            return Err(TokensError::Invalid {
                path: name,
                why: "larger than 1 MiB",
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text).map_err(|e| match e {
            ParseError::Line(line) => TokensError::Line { path: name, line },
            ParseError::Empty => TokensError::Invalid {
                path: name,
                why: "no token hash in the file",
            },
        })
    }

    fn parse(text: &str) -> Result<Self, ParseError> {
        let mut hashes = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            // `sha256sum` output: the hash, then "  -" or a file name.
            let hex = line.split_whitespace().next().unwrap_or("");
            hashes.push(parse_hex32(hex).ok_or(ParseError::Line(i + 1))?);
        }
        if hashes.is_empty() {
            return Err(ParseError::Empty);
        }
        Ok(Tokens(hashes))
    }

    /// Whether `token` hashes to one of the accepted hashes (constant time in the token
    /// and in which hash matched).
    pub fn accepts(&self, token: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut ok = subtle::Choice::from(0);
        for h in &self.0 {
            ok |= h.ct_eq(&digest);
        }
        bool::from(ok)
    }
}

enum ParseError {
    Line(usize),
    Empty,
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Parses a SHA-256 given as 64 hex digits (optionally with `:` separators, as
/// certificate tools print them).
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let cleaned: String = s.chars().filter(|c| *c != ':').collect();
    parse_hex32(&cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_hex(token: &[u8]) -> String {
        hex::encode(Sha256::digest(token))
    }

    #[test]
    fn accepts_only_listed_tokens() {
        let text = format!(
            "# clinic A\n{}  -\n\n{} # clinic B\n",
            hash_hex(b"alpha"),
            hash_hex(b"beta").to_uppercase()
        );
        let t = Tokens::parse(&text).ok().unwrap();
        assert!(t.accepts(b"alpha"));
        assert!(t.accepts(b"beta"));
        assert!(!t.accepts(b"gamma"));
        assert!(!t.accepts(b""));
    }

    #[test]
    fn bad_lines_are_named() {
        let text = format!("{}\nnot-a-hash\n", hash_hex(b"a"));
        assert!(matches!(Tokens::parse(&text), Err(ParseError::Line(2))));
        assert!(matches!(Tokens::parse("# only\n"), Err(ParseError::Empty)));
        assert!(parse_hex32(&"g".repeat(64)).is_none());
        assert!(parse_hex32("abcd").is_none());
    }

    #[test]
    fn file_round_trip_and_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(&p, hash_hex(b"t")).unwrap();
        assert!(Tokens::load(&p).unwrap().accepts(b"t"));
        std::fs::write(&p, vec![b'#'; (MAX_TOKENS_FILE + 1) as usize]).unwrap();
        assert!(matches!(Tokens::load(&p), Err(TokensError::Invalid { .. })));
    }

    #[test]
    fn pins_parse_with_or_without_colons() {
        let h = hash_hex(b"cert");
        let colons: Vec<String> = h
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        assert_eq!(parse_sha256(&h), parse_sha256(&colons.join(":")));
        assert!(parse_sha256(&h).is_some());
    }
}
