//! Code phrases and the SPAKE2 exchange that turns one into a Noise PSK.
//!
//! A code reads `482913-crystal-harbor-orbit`: a nameplate number (which rendezvous to
//! use, public) and three words from the BIP-39 English list (2,048 words, MIT licence,
//! `src/crypto/wordlist.txt`), so the secret part carries 3 × 11 = 33 bits. An attacker
//! gets one online guess per run: SPAKE2 leaks nothing an offline search could use, and
//! a pairing burns the nameplate at the relay.
//!
//! Nameplates are drawn from 1..=[`MAX_NAMEPLATE`] (a million): wide enough that the
//! nameplates attackers can burn or hold within the relay's per-source limits are a small
//! fraction of the space (docs/SECURITY.md, "Relay: code rendezvous under attack").
//! Codes with shorter numbers (`7-crystal-harbor-orbit`) still parse.
//!
//! `psk = HKDF-SHA256(ikm = SPAKE2 key, salt = rendezvous id, info = "phi-conduit v1 noise-psk")`.

use hkdf::Hkdf;
use sha2::Sha256;
use spake2::{Ed25519Group, Identity as SpakeIdentity, Password, Spake2};
use thiserror::Error;
use zeroize::Zeroizing;

/// Words in a code after the nameplate.
pub const CODE_WORDS: usize = 3;
/// Bits of secret in a code.
pub const CODE_BITS: u32 = 33;
/// Largest nameplate number generated (they are drawn uniformly from 1..=this).
pub const MAX_NAMEPLATE: u32 = 999_999;
const PSK_INFO: &[u8] = b"phi-conduit v1 noise-psk";
const SPAKE_ID: &[u8] = b"phi-conduit v1 code";

static WORDS_TEXT: &str = include_str!("wordlist.txt");

/// Errors of codes and the PAKE.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PakeError {
    /// The code is not `NUMBER-word-word-word` with words from the list.
    #[error("malformed code (expected NUMBER-word-word-word, e.g. 7-crystal-harbor-orbit)")]
    MalformedCode,
    /// The peer's SPAKE2 message is invalid.
    #[error("invalid PAKE message from peer")]
    BadMessage,
    /// No randomness.
    #[error("no random numbers available")]
    Random,
    /// A word of the code is not in the word list, and no single word is close to it.
    #[error("{}", not_in_list(*.position, .word, .nearest))]
    NotAWord {
        /// Its place among the words (1 for the first word after the number).
        position: usize,
        /// The word as typed.
        word: String,
        /// The closest words of the list (several, equally close), if any is close.
        nearest: Vec<&'static str>,
    },
    /// More than one word needed correcting: a code is corrected one word at most.
    #[error("code words {} are not in the word list: check the code the sender printed", .0.join(", "))]
    TooManyCorrections(Vec<String>),
}

/// The message of [`PakeError::NotAWord`].
fn not_in_list(position: usize, word: &str, nearest: &[&str]) -> String {
    let shown = crate::transfer::paths::escape(word);
    let mut m =
        format!("code word {position} ({shown:?}) is not in the word list (BIP-39 English)");
    match nearest {
        [] => m.push_str(": check the code the sender printed"),
        many => {
            m.push_str(": did you mean ");
            m.push_str(&many.join(" or "));
            m.push('?');
        }
    }
    m
}

/// How a word of a typed code was read ([`Code::parse_forgiving`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// The start of exactly one word of the list (at least [`MIN_PREFIX`] letters),
    /// completed to it.
    Completed {
        /// Its place among the words (1 for the first word after the number).
        position: usize,
        /// As typed.
        typed: String,
        /// The word of the list.
        word: &'static str,
    },
    /// Not in the list, but exactly one word of the list is closest, within
    /// [`MAX_DISTANCE`] edits (a letter added, left out, changed, or two swapped).
    Corrected {
        /// Its place among the words.
        position: usize,
        /// As typed.
        typed: String,
        /// The word of the list.
        word: &'static str,
        /// The edits between them.
        distance: usize,
    },
}

/// Fewest letters a typed word needs to be completed from its start (every BIP-39
/// word is told apart by its first four letters; three are often enough). A typed word
/// that is itself in the list is that word, never completed (`can`, not `canoe`).
pub const MIN_PREFIX: usize = 3;
/// Most edits a typed word may be from a word of the list to be corrected to it.
pub const MAX_DISTANCE: usize = 2;

fn words() -> impl Iterator<Item = &'static str> {
    WORDS_TEXT.lines().map(str::trim).filter(|w| !w.is_empty())
}

fn word_at(i: usize) -> Option<&'static str> {
    words().nth(i)
}

/// A code phrase: nameplate and secret words.
#[derive(Clone, PartialEq, Eq)]
pub struct Code {
    nameplate: u32,
    words: [&'static str; CODE_WORDS],
}

impl Code {
    /// A fresh random code.
    pub fn generate() -> Result<Self, PakeError> {
        let mut r = [0u8; 4 + 2 * CODE_WORDS];
        getrandom::getrandom(&mut r).map_err(|_| PakeError::Random)?;
        // The modulo bias of 2^32 mod 999,999 is below 2^-12 per value: irrelevant for a
        // public routing number.
        let nameplate = 1 + u32::from_le_bytes([r[0], r[1], r[2], r[3]]) % MAX_NAMEPLATE;
        let mut ws = [""; CODE_WORDS];
        for (i, w) in ws.iter_mut().enumerate() {
            let idx = usize::from(u16::from_le_bytes([r[4 + 2 * i], r[5 + 2 * i]])) % 2048;
            *w = word_at(idx).ok_or(PakeError::Random)?;
        }
        Ok(Self {
            nameplate,
            words: ws,
        })
    }

    /// Parses `NUMBER-word-word-word` (case-insensitive, surrounding space ignored).
    pub fn parse(text: &str) -> Result<Self, PakeError> {
        let lower = text.trim().to_ascii_lowercase();
        let mut parts = lower.split('-');
        let nameplate: u32 = parts
            .next()
            .filter(|n| !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .ok_or(PakeError::MalformedCode)?;
        let mut ws = [""; CODE_WORDS];
        for w in ws.iter_mut() {
            let part = parts.next().ok_or(PakeError::MalformedCode)?;
            *w = words()
                .find(|x| *x == part)
                .ok_or(PakeError::MalformedCode)?;
        }
        if parts.next().is_some() {
            return Err(PakeError::MalformedCode);
        }
        Ok(Self {
            nameplate,
            words: ws,
        })
    }

    /// Parses a code as a person typed it: like [`Code::parse`], but a word that is not
    /// in the list is completed when it starts exactly one word of the list (at least
    /// [`MIN_PREFIX`] letters), or corrected when exactly one word of the list is closest
    /// to it within [`MAX_DISTANCE`] edits; one word at most is corrected (completions
    /// are not limited). Says what was completed or corrected. A word that can be
    /// neither is [`PakeError::NotAWord`], naming it (and the nearest words, if several
    /// are equally close).
    pub fn parse_forgiving(text: &str) -> Result<(Self, Vec<Fix>), PakeError> {
        let lower = text.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('-').collect();
        if parts.len() != 1 + CODE_WORDS {
            return Err(PakeError::MalformedCode);
        }
        let mut fixed = String::from(parts[0]);
        let mut fixes = Vec::new();
        for (i, part) in parts[1..].iter().enumerate() {
            let position = i + 1;
            let word = match read_word(part) {
                Read::Exact(w) => w,
                Read::Fixed(fix) => {
                    let w = match &fix {
                        Fix::Completed { word, .. } | Fix::Corrected { word, .. } => *word,
                    };
                    fixes.push(fix.at(position));
                    w
                }
                Read::Unknown(nearest) => {
                    return Err(PakeError::NotAWord {
                        position,
                        word: (*part).to_string(),
                        nearest,
                    });
                }
            };
            fixed.push('-');
            fixed.push_str(word);
        }
        let corrected: Vec<String> = fixes
            .iter()
            .filter_map(|f| match f {
                Fix::Corrected {
                    position, typed, ..
                } => Some(format!(
                    "{position} ({:?})",
                    crate::transfer::paths::escape(typed)
                )),
                Fix::Completed { .. } => None,
            })
            .collect();
        if corrected.len() > 1 {
            return Err(PakeError::TooManyCorrections(corrected));
        }
        Ok((Self::parse(&fixed)?, fixes))
    }

    /// The nameplate number (public: it picks the rendezvous).
    pub fn nameplate(&self) -> u32 {
        self.nameplate
    }

    fn secret(&self) -> Zeroizing<String> {
        Zeroizing::new(self.words.join("-"))
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.nameplate, self.words.join("-"))
    }
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Code({}-...)", self.nameplate)
    }
}

impl Fix {
    fn at(self, position: usize) -> Self {
        match self {
            Fix::Completed { typed, word, .. } => Fix::Completed {
                position,
                typed,
                word,
            },
            Fix::Corrected {
                typed,
                word,
                distance,
                ..
            } => Fix::Corrected {
                position,
                typed,
                word,
                distance,
            },
        }
    }
}

/// How one typed word reads against the list.
enum Read {
    Exact(&'static str),
    /// Completed or corrected (position still 0).
    Fixed(Fix),
    /// Neither; the nearest words within [`MAX_DISTANCE`], if several tie.
    Unknown(Vec<&'static str>),
}

fn read_word(typed: &str) -> Read {
    if let Some(w) = words().find(|w| *w == typed) {
        return Read::Exact(w);
    }
    if typed.is_empty() || typed.len() > 16 || !typed.bytes().all(|b| b.is_ascii_lowercase()) {
        return Read::Unknown(Vec::new());
    }
    if typed.len() >= MIN_PREFIX {
        let mut starting = words().filter(|w| w.starts_with(typed));
        if let (Some(word), None) = (starting.next(), starting.next()) {
            return Read::Fixed(Fix::Completed {
                position: 0,
                typed: typed.to_string(),
                word,
            });
        }
    }
    let mut best = MAX_DISTANCE + 1;
    let mut nearest = Vec::new();
    for w in words() {
        let d = edit_distance(typed.as_bytes(), w.as_bytes(), best);
        if d < best {
            best = d;
            nearest.clear();
        }
        if d == best && d <= MAX_DISTANCE {
            nearest.push(w);
        }
    }
    match nearest.as_slice() {
        [word] => Read::Fixed(Fix::Corrected {
            position: 0,
            typed: typed.to_string(),
            word,
            distance: best,
        }),
        _ => Read::Unknown(nearest),
    }
}

/// The edits (insert, delete, substitute, swap of two neighbours) between `a` and `b`
/// (optimal string alignment distance); anything above `limit` may be reported as
/// `limit + 1`.
fn edit_distance(a: &[u8], b: &[u8], limit: usize) -> usize {
    if a.len().abs_diff(b.len()) > limit {
        return limit + 1;
    }
    // Three rows: two back (for a swap), one back, this one.
    let mut two: Vec<usize> = vec![0; b.len() + 1];
    let mut one: Vec<usize> = (0..=b.len()).collect();
    let mut row: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        row[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (one[j] + 1).min(row[j - 1] + 1).min(one[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(two[j - 2] + 1);
            }
            row[j] = d;
        }
        std::mem::swap(&mut two, &mut one);
        std::mem::swap(&mut one, &mut row);
    }
    one[b.len()].min(limit + 1)
}

/// One side of the symmetric SPAKE2 exchange.
pub struct Pake {
    state: Spake2<Ed25519Group>,
    rendezvous: [u8; 32],
}

impl Pake {
    /// Starts the exchange for `code` at `rendezvous`; returns the message to send.
    pub fn start(code: &Code, rendezvous: [u8; 32]) -> (Self, Vec<u8>) {
        let mut id = SPAKE_ID.to_vec();
        id.extend_from_slice(&rendezvous);
        let (state, msg) = Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(code.secret().as_bytes()),
            &SpakeIdentity::new(&id),
        );
        (Self { state, rendezvous }, msg)
    }

    /// Finishes with the peer's message and derives the Noise PSK.
    pub fn finish(self, peer_msg: &[u8]) -> Result<Zeroizing<[u8; 32]>, PakeError> {
        let key = Zeroizing::new(
            self.state
                .finish(peer_msg)
                .map_err(|_| PakeError::BadMessage)?,
        );
        let hk = Hkdf::<Sha256>::new(Some(&self.rendezvous), &key);
        let mut psk = Zeroizing::new([0u8; 32]);
        hk.expand(PSK_INFO, psk.as_mut_slice())
            .map_err(|_| PakeError::BadMessage)?;
        Ok(psk)
    }
}

impl std::fmt::Debug for Pake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pake(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_list_has_2048_distinct_words() {
        let mut w: Vec<_> = words().collect();
        assert_eq!(w.len(), 2048);
        w.sort_unstable();
        w.dedup();
        assert_eq!(w.len(), 2048);
    }

    #[test]
    fn nameplates_spread_over_the_wide_space() {
        let plates: std::collections::HashSet<u32> = (0..200)
            .map(|_| Code::generate().unwrap().nameplate())
            .collect();
        assert!(plates.iter().all(|n| (1..=MAX_NAMEPLATE).contains(n)));
        // 200 draws from a million: collisions are rare, and most need 6 digits.
        assert!(plates.len() >= 195, "{}", plates.len());
        assert!(plates.iter().filter(|n| **n > 99_999).count() >= 150);
        assert_eq!(
            Code::parse("999999-crystal-harbor-orbit")
                .unwrap()
                .nameplate(),
            999_999
        );
        assert_eq!(CODE_BITS, 33);
    }

    #[test]
    fn codes_round_trip_and_reject_garbage() {
        let c = Code::generate().unwrap();
        assert_eq!(Code::parse(&c.to_string()).unwrap(), c);
        assert_eq!(Code::parse(&c.to_string().to_uppercase()).unwrap(), c);
        for bad in [
            "",
            "7",
            "7-abandon-ability",
            "x-abandon-ability-able",
            "7-abandon-ability-notaword",
            "7-abandon-ability-able-about",
        ] {
            assert_eq!(Code::parse(bad), Err(PakeError::MalformedCode), "{bad}");
        }
    }

    #[test]
    fn edit_distances_count_insertions_deletions_changes_and_swaps() {
        let d = |a: &str, b: &str| edit_distance(a.as_bytes(), b.as_bytes(), 5);
        assert_eq!(d("harbor", "harbor"), 0);
        assert_eq!(d("harbr", "harbor"), 1);
        assert_eq!(d("harbour", "harbor"), 1);
        assert_eq!(d("hrabor", "harbor"), 1);
        assert_eq!(d("harbxr", "harbor"), 1);
        assert_eq!(d("hrbr", "harbor"), 2);
        assert_eq!(d("", "abc"), 3);
        assert_eq!(edit_distance(b"a", b"abcdefgh", 2), 3);
    }

    #[test]
    fn a_typed_code_is_completed_and_one_mistyped_word_corrected() {
        let right = Code::parse("7-crystal-harbor-orbit").unwrap();
        // Exact: nothing to say.
        let (c, fixes) = Code::parse_forgiving(" 7-Crystal-harbor-orbit ").unwrap();
        assert_eq!((c, fixes), (right.clone(), vec![]));
        // Starts of words (unique from three letters on) are completed, any number.
        let (c, fixes) = Code::parse_forgiving("7-cryst-harb-orbi").unwrap();
        assert_eq!(c, right);
        assert_eq!(fixes.len(), 3);
        assert!(matches!(
            &fixes[0],
            Fix::Completed { position: 1, typed, word: "crystal" } if typed == "cryst"
        ));
        // One mistyped word: a letter left out, one too many, two swapped.
        for typed in [
            "7-crystl-harbor-orbit",
            "7-crystal-harbour-orbit",
            "7-crystal-harbor-obrit",
        ] {
            let (c, fixes) = Code::parse_forgiving(typed).unwrap();
            assert_eq!(c, right, "{typed}");
            assert!(
                matches!(fixes.as_slice(), [Fix::Corrected { distance: 1, .. }]),
                "{typed}: {fixes:?}"
            );
        }
        // Two edits away is still corrected when one word is closest.
        let (c, fixes) = Code::parse_forgiving("7-kristal-harbor-orbit").unwrap();
        assert_eq!(c, right);
        assert!(matches!(
            fixes.as_slice(),
            [Fix::Corrected {
                position: 1,
                distance: 2,
                word: "crystal",
                ..
            }]
        ));
    }

    #[test]
    fn a_word_that_cannot_be_read_is_named() {
        // Far from every word: named, with the advice to check.
        let e = Code::parse_forgiving("7-crystal-xqzzvw-orbit").unwrap_err();
        assert!(
            matches!(&e, PakeError::NotAWord { position: 2, word, nearest } if word == "xqzzvw" && nearest.is_empty()),
            "{e:?}"
        );
        let m = e.to_string();
        assert!(
            m.contains("code word 2")
                && m.contains("\"xqzzvw\"")
                && m.contains("not in the word list"),
            "{m}"
        );
        // Several words equally close: not guessed, offered.
        let e = Code::parse_forgiving("7-crystal-harbor-cax").unwrap_err();
        match &e {
            PakeError::NotAWord {
                position: 3,
                nearest,
                ..
            } => {
                assert!(*nearest == ["can", "car", "cat"], "{nearest:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("did you mean "), "{e}");
        // Two mistyped words: not corrected.
        let e = Code::parse_forgiving("7-crystl-harbr-orbit").unwrap_err();
        assert!(
            matches!(e, PakeError::TooManyCorrections(ref w) if w.len() == 2),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("code words 1 (\"crystl\"), 2 (\"harbr\")"),
            "{e}"
        );
        // The shape is still checked.
        for bad in [
            "",
            "7",
            "7-crystal-harbor",
            "x-crystal-harbor-orbit",
            "7-a-b-c-d",
        ] {
            assert!(Code::parse_forgiving(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn same_code_same_psk_and_different_code_different_psk() {
        let rv = [3u8; 32];
        let a = Code::parse("7-crystal-harbor-orbit").unwrap();
        let b = Code::parse("7-crystal-harbor-orbit").unwrap();
        let wrong = Code::parse("7-crystal-harbor-oven").unwrap();
        let (pa, ma) = Pake::start(&a, rv);
        let (pb, mb) = Pake::start(&b, rv);
        assert_eq!(*pa.finish(&mb).unwrap(), *pb.finish(&ma).unwrap());
        let (pa, ma) = Pake::start(&a, rv);
        let (pw, mw) = Pake::start(&wrong, rv);
        assert_ne!(*pa.finish(&mw).unwrap(), *pw.finish(&ma).unwrap());
    }
}
