//! Reading a secret the way a password is read, so that it stays off the command line
//! (where `ps` and the shell history show it): from the terminal with echo off, or as one
//! line on standard input when that is not a terminal (scripts); and reading a code
//! phrase that way, completing and correcting its words ([`ask_code`]).

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::Context;
use zeroize::Zeroizing;

use crate::crypto::pake::{Code, Fix};

/// Longest line accepted (a code phrase is far shorter).
const MAX_LINE: u64 = 1024;

/// Reads a secret: from the controlling terminal (`/dev/tty`, echo off) after showing
/// `prompt` there when standard input is a terminal; otherwise one line of standard
/// input. The line end is removed; an empty answer is an error.
pub(crate) fn read_secret(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    let line = if std::io::stdin().is_terminal() {
        from_tty(prompt)?
    } else {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .take(MAX_LINE)
            .read_line(&mut line)
            .context("reading the code from standard input")?;
        line
    };
    let trimmed = Zeroizing::new(line.trim().to_string());
    if trimmed.is_empty() {
        anyhow::bail!("no code given (type it when asked, or give it on standard input)");
    }
    Ok(trimmed)
}

/// Prompts on the terminal and reads one line with echo off, restoring the terminal's
/// settings afterwards (also when the read fails).
fn from_tty(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("opening the terminal (/dev/tty) to ask for the code")?;
    let saved = tcgetattr(&tty).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    // The newline the user types is still shown, so the next output starts a line.
    quiet.local_modes.insert(LocalModes::ECHONL);
    (&tty).write_all(prompt.as_bytes())?;
    (&tty).flush()?;
    tcsetattr(&tty, OptionalActions::Flush, &quiet).context("turning off the echo")?;
    let mut line = Zeroizing::new(String::new());
    let read = std::io::BufReader::new((&tty).take(MAX_LINE)).read_line(&mut line);
    let restored = tcsetattr(&tty, OptionalActions::Now, &saved);
    read.context("reading the code from the terminal")?;
    restored.context("restoring the terminal's settings")?;
    Ok(line)
}

/// Tries at the terminal before giving up on a code that cannot be read.
const CODE_TRIES: usize = 3;

/// The code of `receive --code CODE`, or of one line of standard input: read as typed
/// ([`Code::parse_forgiving`]), what was corrected said on stderr.
pub(crate) fn code_from(text: &str) -> anyhow::Result<Code> {
    let (code, fixes) = Code::parse_forgiving(text)?;
    for fix in &fixes {
        if let Some(note) = correction(fix) {
            eprintln!("{note}");
        }
    }
    Ok(code)
}

/// `receive --code` without a value: asks for the code at the terminal (hidden), or
/// reads it as one line of standard input when that is not a terminal. At the terminal
/// a word that is not in the list is completed or corrected, and a correction is
/// confirmed; a code that cannot be read (or a correction turned down) is asked for
/// again, [`CODE_TRIES`] times in all.
pub(crate) fn ask_code() -> anyhow::Result<Code> {
    if !std::io::stdin().is_terminal() {
        return code_from(&read_secret("code: ")?);
    }
    let mut last = None;
    for _ in 0..CODE_TRIES {
        let line = read_secret("code (words from their start are enough): ")?;
        match Code::parse_forgiving(&line) {
            Ok((code, fixes)) => {
                let notes: Vec<String> = fixes.iter().filter_map(correction).collect();
                if notes.is_empty() || confirm(&notes, &code)? {
                    return Ok(code);
                }
            }
            Err(e) => {
                eprintln!("{e}; type the code again");
                last = Some(e);
            }
        }
    }
    match last {
        Some(e) => Err(e.into()),
        None => anyhow::bail!("no code accepted after {CODE_TRIES} tries"),
    }
}

/// What a correction of a word is, for the person who typed it; a completion goes
/// without saying.
fn correction(fix: &Fix) -> Option<String> {
    match fix {
        Fix::Completed { .. } => None,
        Fix::Corrected {
            position,
            typed,
            word,
            ..
        } => Some(format!(
            "code word {position} ({:?}) is not in the word list; read as {word:?}, the closest word",
            crate::transfer::paths::escape(typed)
        )),
    }
}

/// Shows the corrections and asks at the terminal whether the corrected code is the one
/// the sender printed (yes unless the answer starts with n).
fn confirm(notes: &[String], code: &Code) -> anyhow::Result<bool> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("opening the terminal (/dev/tty) to confirm the code")?;
    for n in notes {
        writeln!(&tty, "{n}")?;
    }
    write!(&tty, "is the code {code}? [Y/n] ")?;
    (&tty).flush()?;
    let mut answer = String::new();
    std::io::BufReader::new((&tty).take(MAX_LINE)).read_line(&mut answer)?;
    Ok(!answer.trim_start().to_ascii_lowercase().starts_with('n'))
}
