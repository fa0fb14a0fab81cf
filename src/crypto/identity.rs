//! This endpoint's X25519 identity, public-key text encoding and fingerprints.
//!
//! Public keys are written `cpk1` followed by 56 lowercase base32 characters (RFC 4648
//! alphabet, no padding) that encode the 32 key bytes and a 3-byte checksum,
//! `BLAKE3-derive-key("phi-conduit v1 public key checksum", key)[..3]` (see
//! docs/PROTOCOL.md, "Identity and key encoding"). A mistyped, truncated or extended key
//! fails the checksum and is rejected, never read as another key.
//!
//! The secret key lives in `<home>/identity/secret.key`, mode 0600, in a 0700 directory;
//! a key file that group or others can read is refused.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;
use thiserror::Error;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::fsutil;
use crate::home::Home;

/// Text prefix of an encoded public key.
pub const PUBLIC_KEY_PREFIX: &str = "cpk1";
/// Checksum bytes appended to the key before encoding.
const CHECKSUM_LEN: usize = 3;
/// Encoded length after the prefix: ceil((32 + 3) * 8 / 5).
const ENCODED_LEN: usize = 56;
const CHECKSUM_CONTEXT: &str = "phi-conduit v1 public key checksum";
const FINGERPRINT_CONTEXT: &str = "phi-conduit v1 fingerprint";
const SECRET_HEADER: &str = "phi-conduit secret key v1\n";
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Errors of identities and key text.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The key text is malformed (prefix, length, alphabet).
    #[error("not a conduit public key: {0}")]
    Malformed(&'static str),
    /// The key text has a wrong checksum: a typo or a truncated copy.
    #[error("public key checksum does not match (mistyped or truncated key)")]
    Checksum,
    /// The key is all zero or of low order: it would give a predictable shared secret.
    #[error("public key is a low-order point and cannot be used")]
    LowOrder,
    /// No identity exists yet.
    #[error("no identity in {0}: run `conduit init` (or `conduit keygen`) first")]
    Missing(PathBuf),
    /// An identity exists and `--force` was not given.
    #[error("an identity already exists in {0} (replacing it loses the old key)")]
    Exists(PathBuf),
    /// The key file can be read by group or others.
    #[error(
        "refusing to use {path}: mode {mode:o} lets group or others read or change the secret key (fix: chmod 600 {path})"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The key file, or a directory above it, could have been written by someone else.
    #[error(transparent)]
    NotOurs(#[from] crate::home::NotOurs),
    /// The key file is not in the expected format.
    #[error("secret key file {0} is corrupt")]
    Corrupt(PathBuf),
    /// IO on the key file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An X25519 public key of an endpoint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps raw bytes, rejecting the all-zero and low-order points.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, IdentityError> {
        // X25519 with any clamped scalar maps every low-order point (including zero) to
        // the all-zero output, so one fixed scalar tells them apart.
        let probe = StaticSecret::from([0x55; 32]);
        let shared = probe.diffie_hellman(&DalekPublic::from(bytes));
        if bool::from(shared.as_bytes().ct_eq(&[0u8; 32])) {
            return Err(IdentityError::LowOrder);
        }
        Ok(Self(bytes))
    }

    /// Parses the `cpk1...` text form, checking its checksum.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let body = text
            .trim()
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or(IdentityError::Malformed("it does not start with cpk1"))?;
        if body.len() != ENCODED_LEN {
            return Err(IdentityError::Malformed(
                "wrong length (truncated or extended?)",
            ));
        }
        let raw = base32_decode(body)
            .ok_or(IdentityError::Malformed("characters outside a-z and 2-7"))?;
        let (key, sum) = raw.split_at(32);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(key);
        if !bool::from(checksum(&bytes).ct_eq(sum)) {
            return Err(IdentityError::Checksum);
        }
        Self::from_bytes(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        let h = blake3::derive_key(FINGERPRINT_CONTEXT, &self.0);
        let mut f = [0u8; 16];
        f.copy_from_slice(&h[..16]);
        Fingerprint(f)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = [0u8; 32 + CHECKSUM_LEN];
        raw[..32].copy_from_slice(&self.0);
        raw[32..].copy_from_slice(&checksum(&self.0));
        write!(f, "{PUBLIC_KEY_PREFIX}{}", base32_encode(&raw))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A short, human-comparable digest of a public key: 128 bits of
/// `BLAKE3-derive-key("phi-conduit v1 fingerprint", key)`, shown as eight groups of four
/// hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pair) in self.0.chunks(2).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            write!(
                f,
                "{:02x}{:02x}",
                pair[0],
                pair.get(1).copied().unwrap_or(0)
            )?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// This endpoint's key pair. The secret is zeroized on drop (each clone's too).
#[derive(Clone)]
pub struct Identity {
    secret: StaticSecret,
    public: PublicKey,
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut_slice()).map_err(|e| IdentityError::Io {
            path: PathBuf::new(),
            source: io::Error::other(e),
        })?;
        Self::from_secret(*seed)
    }

    /// The identity of a given secret scalar.
    pub fn from_secret(secret: [u8; 32]) -> Result<Self, IdentityError> {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from_bytes(DalekPublic::from(&secret).to_bytes())?;
        Ok(Self { secret, public })
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret scalar (for the handshake and the audit key derivation).
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// Path of the secret key file in `home`.
    pub fn key_path(home: &Home) -> PathBuf {
        home.path().join("identity").join("secret.key")
    }

    /// Loads the identity of `home`, refusing a key file others can read, and one that
    /// others could have written ([`crate::home::check_ours`]).
    pub fn load(home: &Home) -> Result<Self, IdentityError> {
        let path = Self::key_path(home);
        let text = read_key_file(home, &path)?;
        let body = text
            .strip_prefix(SECRET_HEADER)
            .ok_or_else(|| IdentityError::Corrupt(path.clone()))?;
        let raw = Zeroizing::new(
            base32_decode(body.trim()).ok_or_else(|| IdentityError::Corrupt(path.clone()))?,
        );
        let secret: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::Corrupt(path.clone()))?;
        let secret = Zeroizing::new(secret);
        Self::from_secret(*secret)
    }

    /// Saves this identity into `home`, refusing to replace one unless `force`.
    pub fn save(&self, home: &Home, force: bool) -> Result<(), IdentityError> {
        let path = Self::key_path(home);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        if !force && fs::symlink_metadata(&path).is_ok() {
            return Err(IdentityError::Exists(home.path().into()));
        }
        let dir = path
            .parent()
            .ok_or_else(|| IdentityError::Corrupt(path.clone()))?;
        fsutil::private_dir(home.path()).map_err(io_err(home.path()))?;
        fsutil::private_dir(dir).map_err(io_err(dir))?;
        let mut text = Zeroizing::new(String::from(SECRET_HEADER));
        text.push_str(&base32_encode(self.secret.as_bytes()));
        text.push('\n');
        fsutil::write_atomic(&path, text.as_bytes(), 0o600).map_err(io_err(&path))
    }
}

/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 << 10;

/// The text of a secret key file of `home`: [`IdentityError::Missing`] when there is
/// none; refused unless it is a regular file of at most 64 KiB that neither group nor
/// others can read or change, and that no one else could have written
/// ([`crate::home::check_ours`]).
pub(crate) fn read_key_file(home: &Home, path: &Path) -> Result<Zeroizing<String>, IdentityError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(IdentityError::Missing(home.path().into()));
        }
        Err(source) => {
            return Err(IdentityError::Io {
                path: path.into(),
                source,
            });
        }
    };
    if !meta.is_file() || meta.len() > MAX_KEY_FILE {
        return Err(IdentityError::Corrupt(path.into()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.into(),
            mode: meta.mode() & 0o777,
        });
    }
    crate::home::check_ours(path, Some(home.check_top()))?;
    fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|source| IdentityError::Io {
            path: path.into(),
            source,
        })
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

fn checksum(key: &[u8; 32]) -> [u8; CHECKSUM_LEN] {
    let h = blake3::derive_key(CHECKSUM_CONTEXT, key);
    let mut c = [0u8; CHECKSUM_LEN];
    c.copy_from_slice(&h[..CHECKSUM_LEN]);
    c
}

/// RFC 4648 base32, lowercase, no padding.
pub(crate) fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Inverse of [`base32_encode`]; `None` on a character outside the alphabet or non-zero
/// padding bits.
pub(crate) fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = BASE32.iter().position(|&a| a == c)? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    (acc == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trips() {
        for n in 0..40 {
            let data: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(base32_decode(&base32_encode(&data)).unwrap(), data);
        }
        assert_eq!(base32_encode(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn key_text_round_trips_and_rejects_every_single_character_change() {
        let id = Identity::generate().unwrap();
        let text = id.public().to_string();
        assert_eq!(text.len(), PUBLIC_KEY_PREFIX.len() + ENCODED_LEN);
        assert_eq!(PublicKey::parse(&text).unwrap(), id.public());
        let body_start = PUBLIC_KEY_PREFIX.len();
        for i in body_start..text.len() {
            for &c in BASE32 {
                if text.as_bytes()[i] == c {
                    continue;
                }
                let mut t = text.clone().into_bytes();
                t[i] = c;
                let t = String::from_utf8(t).unwrap();
                assert!(PublicKey::parse(&t).is_err(), "accepted {t}");
            }
        }
        assert!(matches!(
            PublicKey::parse(&text[..text.len() - 1]),
            Err(IdentityError::Malformed(_))
        ));
    }

    #[test]
    fn low_order_points_are_rejected() {
        assert!(matches!(
            PublicKey::from_bytes([0; 32]),
            Err(IdentityError::LowOrder)
        ));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(matches!(
            PublicKey::from_bytes(one),
            Err(IdentityError::LowOrder)
        ));
        // A point of order 8 (from the curve's list of low-order points).
        let p8 = hex_32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        assert!(matches!(
            PublicKey::from_bytes(p8),
            Err(IdentityError::LowOrder)
        ));
    }

    fn hex_32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
