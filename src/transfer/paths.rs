//! Relative paths from a peer's manifest: untrusted until validated.
//!
//! A [`RelPath`] can only be made by [`RelPath::parse`], which accepts a path only if it
//! is safe to join under a destination directory on every OS the files may travel to:
//! `/`-separated, relative, no `.` or `..` or empty components, no control characters
//! (C0, DEL, C1), no bidirectional overrides or isolates, no backslash, colon or other
//! Windows-reserved characters, no Windows device names (`CON`, `NUL`, `COM1.txt`, ...),
//! no component ending in a dot or a space, components of at most 255 bytes, and at most
//! 4,096 bytes in all. [`check_collisions`] rejects a set of paths with duplicates,
//! names equal after Unicode NFC normalization and case folding, or a file that is also
//! another file's directory.

use std::collections::HashSet;
use std::fmt;

use thiserror::Error;
use unicode_normalization::UnicodeNormalization;

/// Longest path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest component, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Why a path was refused. The offending name is kept escaped, safe to print.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Empty path.
    #[error("empty path")]
    Empty,
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("path longer than 4096 bytes")]
    TooLong,
    /// A component longer than [`MAX_COMPONENT_BYTES`].
    #[error("path component longer than 255 bytes in {0}")]
    ComponentTooLong(String),
    /// Absolute, UNC or drive-qualified.
    #[error("absolute path {0}")]
    Absolute(String),
    /// `.`, `..` or an empty component.
    #[error("path {0} has a '.', '..' or empty component")]
    Traversal(String),
    /// A character that is unsafe on some OS or on a terminal.
    #[error("path {0} has a forbidden character")]
    ForbiddenChar(String),
    /// A Windows device name.
    #[error("path {0} uses a reserved device name")]
    ReservedName(String),
    /// A component ending in a dot or a space.
    #[error("path {0} has a component ending in a dot or space")]
    TrailingDotOrSpace(String),
    /// Two entries collide.
    #[error("paths collide: {0} and {1}")]
    Collision(String, String),
}

/// A validated relative path, `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    /// Validates `path` (see the module docs).
    pub fn parse(path: &str) -> Result<Self, PathError> {
        let shown = || escape(path);
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        if path.starts_with('/') || path.starts_with('\\') || has_drive(path) {
            return Err(PathError::Absolute(shown()));
        }
        if path.chars().any(forbidden_char) {
            return Err(PathError::ForbiddenChar(shown()));
        }
        for comp in path.split('/') {
            if comp.is_empty() || comp == "." || comp == ".." {
                return Err(PathError::Traversal(shown()));
            }
            if comp.len() > MAX_COMPONENT_BYTES {
                return Err(PathError::ComponentTooLong(shown()));
            }
            if comp.ends_with('.') || comp.ends_with(' ') {
                return Err(PathError::TrailingDotOrSpace(shown()));
            }
            if reserved(comp) {
                return Err(PathError::ReservedName(shown()));
            }
        }
        Ok(Self(path.to_string()))
    }

    /// The path text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The key two paths collide on: NFC-normalized and lowercased.
    fn fold(&self) -> String {
        self.0.nfc().collect::<String>().to_lowercase()
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(&self.0))
    }
}

fn has_drive(path: &str) -> bool {
    let b = path.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

fn forbidden_char(c: char) -> bool {
    c.is_control() || matches!(c, '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') || is_bidi(c)
}

fn is_bidi(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

fn reserved(comp: &str) -> bool {
    let stem = comp
        .split('.')
        .next()
        .unwrap_or(comp)
        .trim_end()
        .to_ascii_uppercase();
    matches!(
        stem.as_str(),
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$"
    ) || ((stem.starts_with("COM") || stem.starts_with("LPT"))
        && stem.len() == 4
        && stem.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
}

/// Invisible characters and whitespace other than the space: a name holding one could
/// look like another name (`report\u{200b}.pdf` as `report.pdf`).
fn is_invisible(c: char) -> bool {
    (c.is_whitespace() && c != ' ')
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// `s` with every control, bidi, invisible and non-printing character shown as
/// `\u{..}`, so a name from a peer can never drive a terminal nor pass for another name.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || c == '\\' || is_bidi(c) || is_invisible(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Rejects duplicates, NFC/case-fold collisions, and a file that is also a directory of
/// another entry.
pub fn check_collisions<'a>(paths: impl IntoIterator<Item = &'a RelPath>) -> Result<(), PathError> {
    let mut files: HashSet<String> = HashSet::new();
    let mut first: std::collections::HashMap<String, &RelPath> = std::collections::HashMap::new();
    let mut dirs: HashSet<String> = HashSet::new();
    let all: Vec<&RelPath> = paths.into_iter().collect();
    for p in &all {
        let key = p.fold();
        if let Some(prev) = first.get(&key) {
            return Err(PathError::Collision(prev.to_string(), p.to_string()));
        }
        first.insert(key.clone(), p);
        files.insert(key.clone());
        let mut acc = String::new();
        let comps: Vec<&str> = key.split('/').collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            dirs.insert(acc.clone());
        }
    }
    for d in &dirs {
        if let Some(p) = first.get(d) {
            return Err(PathError::Collision(
                p.to_string(),
                format!("{}/...", escape(d)),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(p: &str) -> PathError {
        RelPath::parse(p).unwrap_err()
    }

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "report.pdf",
            "a/b/c.txt",
            "Données/é.txt",
            "x.tar.gz",
            "conf/file",
            "console.log",
            "COM10",
            "a b/c",
        ] {
            assert!(RelPath::parse(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn traversal_is_rejected() {
        assert!(matches!(bad("../../etc/passwd"), PathError::Traversal(_)));
        assert!(matches!(bad("a/../b"), PathError::Traversal(_)));
        assert!(matches!(bad("a/./b"), PathError::Traversal(_)));
        assert!(matches!(bad("a//b"), PathError::Traversal(_)));
        assert!(matches!(bad("a/"), PathError::Traversal(_)));
    }

    #[test]
    fn absolute_drive_and_unc_paths_are_rejected() {
        for p in [
            "/abs",
            "C:\\x",
            "C:x",
            "\\\\srv\\share",
            "\\\\?\\c:\\x",
            "c:/x",
        ] {
            assert!(
                matches!(bad(p), PathError::Absolute(_) | PathError::ForbiddenChar(_)),
                "{p}"
            );
        }
    }

    #[test]
    fn windows_reserved_names_are_rejected_everywhere() {
        for p in ["CON", "nul", "a/COM1.txt", "lpt9.log", "AUX.tar.gz", "PRN"] {
            assert!(matches!(bad(p), PathError::ReservedName(_)), "{p}");
        }
        for p in ["trailing.", "space ", "dir./x"] {
            assert!(matches!(bad(p), PathError::TrailingDotOrSpace(_)), "{p}");
        }
    }

    #[test]
    fn control_escape_and_bidi_characters_are_rejected_and_shown_escaped() {
        for p in [
            "a\0b",
            "bell\u{7}",
            "\u{1b}[31mred",
            "evil\u{202e}fdp.exe",
            "c1\u{85}x",
            "del\u{7f}",
        ] {
            let e = bad(p);
            assert!(matches!(e, PathError::ForbiddenChar(_)), "{p}");
            let shown = e.to_string();
            assert!(
                !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "{shown:?}"
            );
        }
    }

    #[test]
    fn invisible_characters_are_shown_escaped() {
        for (name, shown) in [
            ("report\u{200b}.pdf", "report\\u{200b}.pdf"),
            ("a\u{feff}b", "a\\u{feff}b"),
            ("nb\u{a0}sp", "nb\\u{a0}sp"),
            ("tag\u{e0041}", "tag\\u{e0041}"),
            ("plain name.pdf", "plain name.pdf"),
            ("Müller ärzte.pdf", "Müller ärzte.pdf"),
        ] {
            assert_eq!(escape(name), shown);
        }
    }

    #[test]
    fn over_long_names_are_rejected() {
        assert!(matches!(
            bad(&"a".repeat(256)),
            PathError::ComponentTooLong(_)
        ));
        let long = vec!["b".repeat(200); 21].join("/");
        assert!(matches!(bad(&long), PathError::TooLong));
        assert!(RelPath::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn collisions_are_rejected() {
        let p = |s: &str| RelPath::parse(s).unwrap();
        let dup = [p("a.txt"), p("a.txt")];
        assert!(check_collisions(&dup).is_err());
        let case = [p("Report.pdf"), p("report.PDF")];
        assert!(check_collisions(&case).is_err());
        let nfc = [p("caf\u{e9}"), p("cafe\u{301}")];
        assert!(check_collisions(&nfc).is_err());
        let file_and_dir = [p("x"), p("x/y")];
        assert!(check_collisions(&file_and_dir).is_err());
        let fine = [p("x/a"), p("x/b"), p("y")];
        assert!(check_collisions(&fine).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn any_accepted_path_stays_inside_the_destination(s in "[a-zA-Z0-9./\\\\: \u{202e}\u{0}-]{1,40}") {
            if let Ok(p) = RelPath::parse(&s) {
                let dest = std::path::Path::new("/dest");
                let joined = dest.join(p.as_str());
                let mut depth = 0i32;
                for c in std::path::Path::new(p.as_str()).components() {
                    match c {
                        std::path::Component::Normal(_) => depth += 1,
                        _ => proptest::prop_assert!(false, "non-normal component in {s:?}"),
                    }
                }
                proptest::prop_assert!(depth >= 1);
                proptest::prop_assert!(joined.starts_with(dest));
            }
        }
    }
}
