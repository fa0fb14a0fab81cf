//! How file names appear in what a transfer prints (stdout, stderr, the journal).
//!
//! File names are ePHI ("Doe Jane MRN 12345.pdf"). With `--audit-names hash` (the default
//! of `receive --daemon`), a name never leaves the process except inside the audit log, and
//! there only as a keyed hash: events and summaries show the same keyed hash the audit
//! records carry (`path_hash`), and error messages that quote a name (a refusal, "already
//! exists", an IO error on the file) have each name of the transfer replaced by
//! `#` and the first 16 hex digits of its hash, so an operator can still match a message
//! to its audit record.
//!
//! A [`Names`] belongs to one transfer: it learns the names of the offer
//! ([`Names::learn`]) and then rewrites text ([`Names::redact`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::audit::record::ChainKey;

/// Hex digits of a name's hash shown in text (as `conduit audit show` prints them).
pub const SHORT_HASH: usize = 16;
/// Most texts (paths and components) learnt for one transfer: a bound on the memory a
/// large offer costs here. Past it, [`Names::complete`] is false and error messages are
/// reported by their kind only.
pub const MAX_LEARNT: usize = 100_000;

/// The names of one transfer and how to show them.
#[derive(Clone, Default)]
pub struct Names {
    /// The audit's name key in names mode `hash`; `None`: names are shown as they are.
    key: Option<Arc<ChainKey>>,
    /// The names learnt.
    known: Arc<Mutex<Known>>,
}

/// Text that stands for a name (a whole path, its escaped form, each component) and the
/// raw name it stands for (`None`: the text itself).
#[derive(Default)]
struct Known {
    raw_of: HashMap<String, Option<String>>,
    /// More names were offered than [`MAX_LEARNT`].
    overflow: bool,
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The names themselves are ePHI: never in a Debug line.
        f.debug_struct("Names")
            .field("hides", &self.hides())
            .finish_non_exhaustive()
    }
}

impl Names {
    /// Names shown as they are.
    pub fn plain() -> Self {
        Self::default()
    }

    /// Names shown as their keyed hash under `key` (the audit's name key).
    pub fn hashed(key: Arc<ChainKey>) -> Self {
        Self {
            key: Some(key),
            known: Arc::default(),
        }
    }

    /// Whether names are hidden (names mode `hash`).
    pub fn hides(&self) -> bool {
        self.key.is_some()
    }

    /// The keyed hash of `name` (64 hex digits), as the audit's `path_hash`; `None` when
    /// names are shown as they are.
    pub fn hash(&self, name: &str) -> Option<String> {
        self.key.as_ref().map(|k| k.name_hash(name))
    }

    /// `name` for an output: itself, or its full keyed hash. An escaped name learnt with
    /// [`Names::learn`] is hashed as the name it stands for, so the value matches the
    /// audit record's `path_hash`.
    pub fn show(&self, name: &str) -> String {
        let Some(key) = &self.key else {
            return name.to_string();
        };
        let raw = self.known().raw_of.get(name).cloned().flatten();
        key.name_hash(raw.as_deref().unwrap_or(name))
    }

    /// `name` for a line people read: itself, or `#` and the first [`SHORT_HASH`] hex
    /// digits of its keyed hash (as in error messages and `conduit audit show`).
    pub fn tag(&self, name: &str) -> String {
        if self.key.is_none() {
            return name.to_string();
        }
        let full = self.show(name);
        format!("#{}", full.get(..SHORT_HASH).unwrap_or(&full))
    }

    /// Learns the names of a transfer (relative paths as sent, `/`-separated), so that
    /// [`Names::redact`] can find them in text. Does nothing when names are shown.
    pub fn learn<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        if self.key.is_none() {
            return;
        }
        let mut known = self.known();
        let known = &mut *known;
        let mut add = |text: &str, raw: &str| {
            if text.is_empty() || known.raw_of.contains_key(text) {
                return;
            }
            if known.raw_of.len() >= MAX_LEARNT {
                known.overflow = true;
                return;
            }
            let raw = (raw != text).then(|| raw.to_string());
            known.raw_of.insert(text.to_string(), raw);
        };
        for name in names {
            add(name, name);
            let escaped = crate::transfer::paths::escape(name);
            add(&escaped, name);
            for part in name.split('/') {
                add(part, part);
                add(&crate::transfer::paths::escape(part), part);
            }
        }
    }

    /// `text` with every learnt name (whole path or component) replaced by `#` and the
    /// first [`SHORT_HASH`] hex digits of its keyed hash; unchanged when names are shown.
    /// A name is replaced where it is not part of a longer word (a letter or digit next to
    /// it), so a one-letter file name does not garble the message.
    pub fn redact(&self, text: &str) -> String {
        let Some(key) = &self.key else {
            return text.to_string();
        };
        let known = self.known();
        // The names in the text, longest first: a whole path is replaced before any of
        // its components.
        let mut found: Vec<(&String, &Option<String>)> = known
            .raw_of
            .iter()
            .filter(|(t, _)| text.contains(t.as_str()))
            .collect();
        found.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        let mut out = text.to_string();
        for (name, raw) in found {
            let raw = raw.as_deref().unwrap_or(name);
            let tag = format!("#{}", &key.name_hash(raw)[..SHORT_HASH]);
            out = replace_words(&out, name, &tag);
        }
        out
    }

    /// Whether every name of the transfer was learnt (at most [`MAX_LEARNT`] texts);
    /// when not, [`Names::redact`] cannot find them all and a message must not be shown
    /// as text.
    pub fn complete(&self) -> bool {
        !self.known().overflow
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `text` with each occurrence of `word` that has no letter or digit right before or
/// after it replaced by `with`.
fn replace_words(text: &str, word: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        let edge = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
        let starts_word = word.chars().next().is_some_and(char::is_alphanumeric);
        let ends_word = word.chars().next_back().is_some_and(char::is_alphanumeric);
        if (!starts_word || edge(before)) && (!ends_word || edge(after)) {
            out.push_str(&rest[..at]);
            out.push_str(with);
        } else {
            // Not a whole word: keep its first character and look further.
            let step = rest[at..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&rest[..at + step]);
            rest = &rest[at + step..];
            continue;
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashed() -> Names {
        Names::hashed(Arc::new(ChainKey::derive(&[7u8; 32], b"test names")))
    }

    #[test]
    fn every_learnt_name_and_component_is_replaced_by_its_hash() {
        let n = hashed();
        n.learn(["Doe Jane/MRN 12345.pdf", "a"]);
        let text = "the receiver refused: Doe Jane/MRN 12345.pdf already exists; \
                    /srv/inbox/Doe Jane/.MRN 12345.pdf.part: denied; a and already";
        let out = n.redact(text);
        for part in ["Doe Jane", "MRN 12345", "12345"] {
            assert!(!out.contains(part), "{part} in {out}");
        }
        let whole = n.hash("Doe Jane/MRN 12345.pdf").unwrap();
        assert!(out.contains(&format!("#{}", &whole[..SHORT_HASH])), "{out}");
        // A one-letter name is replaced only as a word of its own.
        assert!(
            out.contains("already exists") && out.contains(" and already"),
            "{out}"
        );
        assert!(!out.contains("; a and"), "{out}");
        // Shown names are the audit's hash of the name (also from their escaped form).
        assert_eq!(n.show("a"), n.hash("a").unwrap());
    }

    #[test]
    fn past_the_bound_the_names_are_incomplete() {
        let n = hashed();
        let many: Vec<String> = (0..MAX_LEARNT).map(|i| format!("n{i}")).collect();
        n.learn(many.iter().map(String::as_str));
        assert!(n.complete());
        n.learn(["one more"]);
        assert!(!n.complete());
    }

    #[test]
    fn plain_names_are_left_alone() {
        let n = Names::plain();
        n.learn(["report.pdf"]);
        assert_eq!(n.redact("report.pdf exists"), "report.pdf exists");
        assert_eq!(n.show("report.pdf"), "report.pdf");
        assert!(!n.hides() && n.hash("x").is_none());
    }

    #[test]
    fn escaped_names_map_to_the_hash_of_the_raw_name() {
        let n = hashed();
        let raw = "bad\u{1b}name.txt";
        n.learn([raw]);
        let escaped = crate::transfer::paths::escape(raw);
        assert_ne!(escaped, raw);
        assert_eq!(n.show(&escaped), n.hash(raw).unwrap());
        assert!(!n.redact(&format!("x {escaped} y")).contains("name.txt"));
    }
}
