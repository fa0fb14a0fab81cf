//! Who may use the console: one-time login tokens, and the sessions they open.
//!
//! `conduit console url` writes a token into the home (`console-login/`, 0700): the file's
//! name is the SHA-256 of the token, its content the time it expires. The running agent
//! redeems a token by removing that file: a removal succeeds once, so a token opens one
//! session, and a lookup by hash compares no secret byte by byte. A session lives in the
//! agent's memory only (a restart logs everyone out); its cookie is 256 random bits, its
//! CSRF token another 256, and it ends after [`SESSION_IDLE`] without a request or
//! [`SESSION_MAX`] in all.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::crypto::file_hash::{FileHash, HashAlg};

/// The folder of pending login tokens, in the home.
pub const LOGIN_DIR: &str = "console-login";

/// How long a login URL stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// A session ends after this long without a request (automatic logoff).
pub const SESSION_IDLE: Duration = Duration::from_secs(15 * 60);

/// A session ends after this long whatever happens.
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 60 * 60);

/// Most sessions at once; the oldest goes first beyond it.
const MAX_SESSIONS: usize = 64;

/// 32 random bytes from the cryptographic module, in hex.
fn random_hex() -> io::Result<String> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| io::Error::other("no random bytes"))?;
    Ok(crate::audit::record::hex(&b))
}

/// The file that stands for `token` (which must be 64 hex digits).
fn token_file(dir: &Path, token: &str) -> Option<PathBuf> {
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let name = FileHash::of(HashAlg::Sha256, token.to_ascii_lowercase().as_bytes()).to_hex();
    Some(dir.join(name))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Makes a fresh one-time token for the console of `home` and returns it; expired tokens
/// are removed on the way.
pub fn issue_token(home: &Path) -> io::Result<String> {
    let dir = home.join(LOGIN_DIR);
    crate::fsutil::private_dir(&dir)?;
    let now = unix_now();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let expired = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .is_none_or(|t| t <= now);
            if expired {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let token = random_hex()?;
    let path = token_file(&dir, &token).ok_or_else(|| io::Error::other("bad token"))?;
    let expires = now + TOKEN_TTL.as_secs();
    crate::fsutil::write_atomic(&path, expires.to_string().as_bytes(), 0o600)?;
    Ok(token)
}

/// Why a token opened no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a token of the right form, or not one that was issued (or used already).
    #[error("this login link is not valid, or was used already")]
    Unknown,
    /// Issued, but more than [`TOKEN_TTL`] ago.
    #[error("this login link has expired")]
    Expired,
}

/// Redeems `token` for the console of `home`: once, and only before it expires.
pub fn redeem_token(home: &Path, token: &str) -> Result<(), Refused> {
    let path = token_file(&home.join(LOGIN_DIR), token).ok_or(Refused::Unknown)?;
    let expires = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    // The removal is what spends the token: of two concurrent uses only one succeeds.
    std::fs::remove_file(&path).map_err(|_| Refused::Unknown)?;
    match expires {
        Some(t) if t > unix_now() => Ok(()),
        _ => Err(Refused::Expired),
    }
}

struct Session {
    csrf: String,
    created: Instant,
    last: Instant,
}

/// The open sessions, by the SHA-256 of their cookie.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<[u8; 32], Session>>);

fn key(cookie: &str) -> [u8; 32] {
    *FileHash::of(HashAlg::Sha256, cookie.as_bytes()).as_bytes()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session: its cookie value and its CSRF token.
    pub fn open(&self) -> io::Result<(String, String)> {
        let (cookie, csrf) = (random_hex()?, random_hex()?);
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| alive(s, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            key(&cookie),
            Session {
                csrf: csrf.clone(),
                created: now,
                last: now,
            },
        );
        Ok((cookie, csrf))
    }

    /// The CSRF token of the live session of `cookie`, which counts as a request.
    pub fn check(&self, cookie: &str) -> Option<String> {
        self.live(cookie, true)
    }

    /// The CSRF token of the live session of `cookie`, without counting as a request: a
    /// page's live updates (Server-Sent Events, the refresh they trigger) do not keep an
    /// unattended session open.
    pub fn peek(&self, cookie: &str) -> Option<String> {
        self.live(cookie, false)
    }

    /// The CSRF token of the live session of `cookie` (a dead one is forgotten); `touch`:
    /// this counts as a request.
    fn live(&self, cookie: &str, touch: bool) -> Option<String> {
        self.live_at(cookie, touch, Instant::now())
    }

    fn live_at(&self, cookie: &str, touch: bool, now: Instant) -> Option<String> {
        let mut map = self.lock();
        let k = key(cookie);
        let s = map.get_mut(&k)?;
        if !alive(s, now) {
            map.remove(&k);
            return None;
        }
        if touch {
            s.last = now;
        }
        Some(s.csrf.clone())
    }

    /// Ends the session of `cookie`.
    pub fn close(&self, cookie: &str) {
        self.lock().remove(&key(cookie));
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.duration_since(s.last) < SESSION_IDLE && now.duration_since(s.created) < SESSION_MAX
}

/// Whether `given` is `expected`, in constant time.
pub fn same_secret(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_once_and_a_forged_one_never() {
        let home = tempfile::tempdir().unwrap();
        let t = issue_token(home.path()).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(
            redeem_token(home.path(), &"0".repeat(64)),
            Err(Refused::Unknown)
        );
        assert_eq!(
            redeem_token(home.path(), "../../etc/passwd"),
            Err(Refused::Unknown)
        );
        assert_eq!(redeem_token(home.path(), &t), Ok(()));
        assert_eq!(redeem_token(home.path(), &t), Err(Refused::Unknown));
        // The token itself is nowhere on disk.
        for e in std::fs::read_dir(home.path().join(LOGIN_DIR)).unwrap() {
            assert_ne!(e.unwrap().file_name().to_string_lossy(), t);
        }
    }

    #[test]
    fn an_expired_token_is_refused_and_spent() {
        let home = tempfile::tempdir().unwrap();
        let t = issue_token(home.path()).unwrap();
        let f = token_file(&home.path().join(LOGIN_DIR), &t).unwrap();
        std::fs::write(&f, (unix_now() - 1).to_string()).unwrap();
        assert_eq!(redeem_token(home.path(), &t), Err(Refused::Expired));
        assert!(!f.exists());
    }

    #[test]
    fn only_requests_keep_a_session_alive_and_live_updates_do_not() {
        let s = Sessions::default();
        let (watched, _) = s.open().unwrap();
        let (used, _) = s.open().unwrap();
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        // Live updates every minute for 14 minutes; a request at minute 14 on the other.
        for m in 1..=14 {
            assert!(s.live_at(&watched, false, t0 + minute * m).is_some());
        }
        assert!(s.live_at(&used, true, t0 + minute * 14).is_some());
        // At minute 16 the watched one ended (15 minutes since its last request), the
        // used one lives on.
        assert!(s.live_at(&watched, false, t0 + minute * 16).is_none());
        assert!(s.live_at(&used, false, t0 + minute * 16).is_some());
        assert!(s.live_at(&used, false, t0 + minute * 30).is_none());
    }

    #[test]
    fn sessions_know_their_cookie_and_csrf_and_end() {
        let s = Sessions::default();
        let (cookie, csrf) = s.open().unwrap();
        assert_eq!(s.check(&cookie), Some(csrf.clone()));
        assert_eq!(s.peek(&cookie), Some(csrf.clone()));
        assert_eq!(s.check(&csrf), None);
        s.close(&cookie);
        assert_eq!(s.check(&cookie), None);
        assert_eq!(s.peek(&cookie), None);
        assert!(
            same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("ab", "abc")
        );
    }
}
