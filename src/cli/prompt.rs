//! Reading a secret the way a password is read, so that it stays off the command line
//! (where `ps` and the shell history show it): from the terminal with echo off, or as one
//! line on standard input when that is not a terminal (scripts).

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::Context;
use zeroize::Zeroizing;

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
